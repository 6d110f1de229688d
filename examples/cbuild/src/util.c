#include "util.h"

size_t util_copy(char *dst, const char *src, size_t cap) {
    size_t n = 0;
    if (cap == 0) return 0;
    while (src[n] && n + 1 < cap) {
        dst[n] = src[n];
        n++;
    }
    dst[n] = '\0';
    return n;
}
