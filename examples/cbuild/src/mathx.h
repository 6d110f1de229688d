#ifndef MATHX_H
#define MATHX_H
long mathx_sum_squares(long n);
#endif
