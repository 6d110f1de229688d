/* Shared by every module: a checked string copy and the program's name. */
#ifndef UTIL_H
#define UTIL_H
#include <stddef.h>
#define PROGRAM "hello"
size_t util_copy(char *dst, const char *src, size_t cap);
#endif
