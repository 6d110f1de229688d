#ifndef GREET_H
#define GREET_H
#include <stddef.h>
size_t greet(char *out, size_t cap, const char *who);
#endif
