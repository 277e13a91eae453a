/*
 * crc32c.h - CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected 0x82F63B78), the checksum of every
 * journal record.  The SSE4.2 crc32 instruction where the CPU has it (checked once, at load), a
 * slicing-by-8 table otherwise; both give the same value (the tests compare them).
 *
 * pyseq_crc32c(0, "123456789", 9) == 0xE3069283.  Pass a previous result as `crc` to continue a
 * checksum over more bytes.
 */
#ifndef PYSEQ_CRC32C_H
#define PYSEQ_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t pyseq_crc32c(uint32_t crc, const void *data, size_t length);
uint32_t pyseq_crc32c_table(uint32_t crc, const void *data, size_t length); /* the portable path */
int pyseq_crc32c_hardware(void); /* 1 if pyseq_crc32c uses the CPU's instruction */

#endif /* PYSEQ_CRC32C_H */
