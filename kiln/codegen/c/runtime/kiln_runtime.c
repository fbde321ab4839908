/* kiln runtime: shared helpers (see kiln_runtime.h). */
#include "kiln_runtime.h"

/* sum_i word_i * (2i + 1) mod 2^64 over the little-endian 64-bit words of a weights payload:
 * how `<model>_init` checks that a blob is the one its model was built with (kiln's Python
 * `params.checksum` computes the same). */
uint64_t kiln_checksum(const unsigned char* p, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n / 8; ++i) {
        uint64_t word = 0;
        for (int b = 7; b >= 0; --b) word = (word << 8) | p[i * 8 + (size_t)b];
        h += word * (2 * (uint64_t)i + 1);
    }
    return h;
}
