/* edgekit test harness: reads input records from input.bin, runs the model on each, appends the outputs to
 * output.bin. Plain stdio, so the same file runs on the host and on a Cortex-M under semihosting, where it also
 * writes the stack bytes the run touched (painted at reset) to stack.txt. */
#include <stdio.h>

#include "ek_model.h"
#ifdef EK_SEMIHOSTING
#include "ek_startup.h"
#endif

int main(void) {
    FILE *in = fopen("input.bin", "rb"), *out = fopen("output.bin", "wb");
    if (!in || !out) return 1;
    while (fread(ek_model_input(), 1, EK_INPUT_BYTES, in) == EK_INPUT_BYTES) {
        ek_model_invoke();
        if (fwrite(ek_model_output(), 1, EK_OUTPUT_BYTES, out) != EK_OUTPUT_BYTES) return 2;
    }
    fclose(in);
    if (fclose(out) != 0) return 3;
#ifdef EK_SEMIHOSTING
    FILE *stack = fopen("stack.txt", "w");
    if (!stack || fprintf(stack, "%lu\n", (unsigned long)ek_stack_used()) < 0 || fclose(stack) != 0) return 4;
#endif
    return 0;
}
