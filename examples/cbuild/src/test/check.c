/* A self-test: exits 1 when a module gives a wrong answer. */
#include <stdio.h>
#include <string.h>
#include "../greet.h"
#include "../mathx.h"

int main(void) {
    char line[96];
    greet(line, sizeof line, "test");
    if (strstr(line, "hello to test") == NULL) { puts("greet: FAIL"); return 1; }
    if (mathx_sum_squares(3) != 14) { puts("mathx: FAIL"); return 1; }
    puts("all checks pass");
    return 0;
}
