/*
 * journal_format.h - every byte of a pyseq journal on disk.
 *
 * A journal is a directory of segment files, each holding a run of consecutive sequences, and one
 * sparse index file per segment.  Everything is little-endian (the byte order of every machine pyseq
 * builds on; checked below), every record is 8-byte aligned, every record has a CRC32C (Castagnoli).
 *
 *   <dir>/<first sequence, 20 digits>.seg   records first_sequence .. (the next segment's first - 1)
 *   <dir>/<first sequence, 20 digits>.idx   (sequence, offset) every ~64 KiB of that segment
 *
 * One writer (the journaler thread of the sequencer) appends; a segment is rolled (a new file
 * started) when the next record would take it past the segment size.  Only the last segment is ever
 * written to, so only its tail can be torn by a crash.
 *
 * Segment header (128 bytes, at offset 0 of a .seg file)
 * ======================================================
 *
 *   +---------------------------------------------------------------+
 *   |                 magic "PYSEQJNL" (8 bytes)                    |   0
 *   +-------------------------------+-------------------------------+
 *   |        format_version         |        header_length (128)    |   8
 *   +-------------------------------+-------------------------------+
 *   |          schema_id            |        schema_version         |  16  the application's message
 *   +-------------------------------+-------------------------------+      schema (0 / 0: undeclared)
 *   |                        first_sequence                         |  24  of this segment's first record
 *   +---------------------------------------------------------------+
 *   |                   created_ns (CLOCK_REALTIME)                 |  32
 *   +-------------------------------+-------------------------------+
 *   |         max_payload           |            flags (0)          |  40  the ring's slot_size - 32
 *   +-------------------------------+-------------------------------+
 *   |                ring_name[64] (NUL-terminated)                 |  48
 *   ...                                                           ...
 *   +---------------------------------------------------------------+
 *   |                     reserved, zero (12 bytes)                 | 112
 *   +-------------------------------+-------------------------------+
 *   |                               |          header_crc           | 124  CRC32C of bytes 0..123
 *   +-------------------------------+-------------------------------+
 *
 * A record (8-byte aligned, record_length bytes; the first at offset 128)
 * =======================================================================
 *
 *   +-------------------------------+-------------------------------+
 *   |            crc                |        record_length          |   0  crc: CRC32C of bytes
 *   +-------------------------------+-------------------------------+      4 .. 40 + length - 1
 *   |                          sequence                             |   8  the ring's frame, as it was
 *   +---------------------------------------------------------------+      in the slot (ring_layout.h):
 *   |                  timestamp_ns (CLOCK_REALTIME)                |  16  sequence, sequencing time,
 *   +-------------------------------+---------------+---------------+      payload length, type,
 *   |            length             |   msg_type    | schema_version|  24  schema version, source,
 *   +-------------------------------+---------------+---------------+      origin
 *   |            source             |            origin             |  32
 *   +-------------------------------+-------------------------------+
 *   |                    payload (length bytes)                     |  40
 *   ...                                                           ...
 *   |                    zero padding to a multiple of 8            |
 *   +---------------------------------------------------------------+
 *
 *   record_length == round_up(40 + length, 8); length <= max_payload; sequences are consecutive, the
 *   first equal to the header's first_sequence.  A record is valid iff all of that holds and its CRC
 *   matches.  The CRC covers record_length, so a torn or flipped length is caught like a torn payload.
 *
 *   The end of the data: the end of the file, or a record that is not valid.  In the last segment, an
 *   invalid record after which no valid record follows is a torn tail (a crash during a write): it is
 *   truncated on recovery and reported.  Anything else invalid (in an earlier segment, or with valid
 *   records after it) is corruption: an error naming segment, offset and sequence.
 *
 * Index file (.idx): a 32-byte header, then 16-byte entries
 * =========================================================
 *
 *   header:  magic "PYSEQIDX" (8) | format_version u32 | entry_length u32 (16) |
 *            first_sequence i64 | stride u32 (bytes of records between entries) | reserved u32
 *   entry:   sequence i64 | offset u64 (of that sequence's record in the .seg file)
 *
 *   Entries are written after the records they point to, in increasing order; the index carries no
 *   checksum because nothing trusts it: a reader seeks to an entry's offset and checks that a valid
 *   record of that sequence starts there (otherwise it scans the segment from its start).  Recovery
 *   drops the entries past a truncated tail; a missing index only makes seeking slower.
 *
 * Durability (the sequenced ring's header, ring_layout.h line 384): the journaler stores
 * journaled_sequence with release once a record is as durable as the fsync policy promises, and
 * advances its gating cursor in the ring only after the write(2) of the record returned: the ring
 * never overwrites a message that is not in the journal (in the page cache, at least).
 */
#ifndef PYSEQ_JOURNAL_FORMAT_H
#define PYSEQ_JOURNAL_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "ring_layout.h"

#define PYSEQ_JOURNAL_MAGIC 0x4c4e4a5145535950ULL /* "PYSEQJNL" read as a little-endian u64 */
#define PYSEQ_INDEX_MAGIC 0x5844495145535950ULL   /* "PYSEQIDX" */
#define PYSEQ_JOURNAL_FORMAT_VERSION 1u
#define PYSEQ_SEGMENT_HEADER_LENGTH 128u
#define PYSEQ_SEGMENT_RING_NAME_LENGTH 64u
#define PYSEQ_RECORD_HEADER_LENGTH 8u                                       /* crc + record_length */
#define PYSEQ_RECORD_OVERHEAD (PYSEQ_RECORD_HEADER_LENGTH + PYSEQ_FRAME_LENGTH) /* 40 */
#define PYSEQ_RECORD_ALIGN 8u
#define PYSEQ_INDEX_HEADER_LENGTH 32u
#define PYSEQ_INDEX_ENTRY_LENGTH 16u
#define PYSEQ_INDEX_STRIDE 65536u
#define PYSEQ_MAX_JOURNAL_PAYLOAD ((1u << 24) - 32u) /* a ring's largest slot less its frame: lengths never wrap */

typedef struct pyseq_segment_header_s {
    uint64_t magic;
    uint32_t format_version;
    uint32_t header_length;
    uint32_t schema_id;
    uint32_t schema_version;
    int64_t first_sequence;
    int64_t created_ns;
    uint32_t max_payload;
    uint32_t flags;
    char ring_name[PYSEQ_SEGMENT_RING_NAME_LENGTH];
    uint8_t reserved[12];
    uint32_t header_crc;
} pyseq_segment_header_t;

typedef struct pyseq_record_header_s {
    uint32_t crc;
    uint32_t record_length;
    pyseq_frame_t frame;
} pyseq_record_header_t;

typedef struct pyseq_index_header_s {
    uint64_t magic;
    uint32_t format_version;
    uint32_t entry_length;
    int64_t first_sequence;
    uint32_t stride;
    uint32_t reserved;
} pyseq_index_header_t;

typedef struct pyseq_index_entry_s {
    int64_t sequence;
    uint64_t offset;
} pyseq_index_entry_t;

static inline uint32_t pyseq_record_length(uint32_t payload_length)
{
    return (PYSEQ_RECORD_OVERHEAD + payload_length + PYSEQ_RECORD_ALIGN - 1) & ~(PYSEQ_RECORD_ALIGN - 1);
}

_Static_assert(sizeof(pyseq_segment_header_t) == PYSEQ_SEGMENT_HEADER_LENGTH, "segment header is 128 bytes");
_Static_assert(offsetof(pyseq_segment_header_t, format_version) == 8, "format_version");
_Static_assert(offsetof(pyseq_segment_header_t, header_length) == 12, "header_length");
_Static_assert(offsetof(pyseq_segment_header_t, schema_id) == 16, "schema_id");
_Static_assert(offsetof(pyseq_segment_header_t, schema_version) == 20, "schema_version");
_Static_assert(offsetof(pyseq_segment_header_t, first_sequence) == 24, "first_sequence");
_Static_assert(offsetof(pyseq_segment_header_t, created_ns) == 32, "created_ns");
_Static_assert(offsetof(pyseq_segment_header_t, max_payload) == 40, "max_payload");
_Static_assert(offsetof(pyseq_segment_header_t, flags) == 44, "flags");
_Static_assert(offsetof(pyseq_segment_header_t, ring_name) == 48, "ring_name");
_Static_assert(offsetof(pyseq_segment_header_t, header_crc) == 124, "header_crc");
_Static_assert(sizeof(pyseq_record_header_t) == PYSEQ_RECORD_OVERHEAD, "record header + frame is 40 bytes");
_Static_assert(offsetof(pyseq_record_header_t, frame) == 8, "the frame follows crc and record_length");
_Static_assert(sizeof(pyseq_index_header_t) == PYSEQ_INDEX_HEADER_LENGTH, "index header is 32 bytes");
_Static_assert(sizeof(pyseq_index_entry_t) == PYSEQ_INDEX_ENTRY_LENGTH, "index entry is 16 bytes");
_Static_assert(PYSEQ_SEGMENT_HEADER_LENGTH % PYSEQ_RECORD_ALIGN == 0, "records start aligned");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the pyseq journal format is little-endian; this C compiler targets a big-endian machine"
#endif

#endif /* PYSEQ_JOURNAL_FORMAT_H */
