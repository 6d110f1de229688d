#include "mathx.h"
#include "util.h"

long mathx_sum_squares(long n) {
    long s = 0;
    for (long i = 1; i <= n; i++) s += i * i;
    return s;
}
