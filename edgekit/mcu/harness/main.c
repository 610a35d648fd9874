/* edgekit test harness: reads input records from input.bin, runs the model on each, appends the outputs to
 * output.bin. Plain stdio, so the same file runs on the host and on a Cortex-M under semihosting. */
#include <stdio.h>

#include "ek_model.h"

int main(void) {
    FILE *in = fopen("input.bin", "rb"), *out = fopen("output.bin", "wb");
    if (!in || !out) return 1;
    while (fread(ek_model_input(), 1, EK_INPUT_BYTES, in) == EK_INPUT_BYTES) {
        ek_model_invoke();
        if (fwrite(ek_model_output(), 1, EK_OUTPUT_BYTES, out) != EK_OUTPUT_BYTES) return 2;
    }
    fclose(in);
    return fclose(out) == 0 ? 0 : 3;
}
