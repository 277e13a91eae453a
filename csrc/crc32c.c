/* crc32c.c - CRC-32C with the SSE4.2 instruction or a slicing-by-8 table (crc32c.h). */
#include "crc32c.h"

#include <string.h>

#define POLY 0x82F63B78u /* 0x1EDC6F41 reflected */

static uint32_t table[8][256];
static int use_hardware;

__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
#if defined(__x86_64__)
    __builtin_cpu_init();
    use_hardware = __builtin_cpu_supports("sse4.2") != 0;
#endif
}

uint32_t pyseq_crc32c_table(uint32_t crc, const void *data, size_t length)
{
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xFF];
        length--;
    }
    while (length >= 8) {
        uint64_t v;
        memcpy(&v, p, 8); /* little-endian: journal_format.h refuses anything else */
        v ^= c;
        c = table[7][v & 0xFF] ^ table[6][(v >> 8) & 0xFF] ^ table[5][(v >> 16) & 0xFF] ^
            table[4][(v >> 24) & 0xFF] ^ table[3][(v >> 32) & 0xFF] ^ table[2][(v >> 40) & 0xFF] ^
            table[1][(v >> 48) & 0xFF] ^ table[0][v >> 56];
        p += 8;
        length -= 8;
    }
    while (length--)
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xFF];
    return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *data, size_t length)
{
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        length--;
    }
    while (length >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        length -= 8;
    }
    while (length--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

uint32_t pyseq_crc32c(uint32_t crc, const void *data, size_t length)
{
#if defined(__x86_64__)
    if (use_hardware)
        return crc32c_sse42(crc, data, length);
#endif
    return pyseq_crc32c_table(crc, data, length);
}

int pyseq_crc32c_hardware(void)
{
    return use_hardware;
}
