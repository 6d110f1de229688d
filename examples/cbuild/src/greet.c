#include <stdio.h>
#include "greet.h"
#include "util.h"

size_t greet(char *out, size_t cap, const char *who) {
    char name[32];
    util_copy(name, who, sizeof name);
    return (size_t)snprintf(out, cap, "%s says hello to %s", PROGRAM, name);
}
