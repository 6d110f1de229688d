#include <stdio.h>
#include "greet.h"
#include "mathx.h"

int main(void) {
    char line[96];
    greet(line, sizeof line, "the mesh");
    printf("%s\n", line);
    printf("sum of squares 1..10 = %ld\n", mathx_sum_squares(10));
    return 0;
}
