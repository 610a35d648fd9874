/* edgekit test harness: reads input records from input.bin, runs the model on each, appends the outputs to
 * output.bin. Plain stdio, so the same file runs on the host and on a Cortex-M under semihosting, where it also
 * writes the stack bytes the run touched (painted at reset) to stack.txt and the ticks of the MPS2 board's
 * CMSDK timer 0 spent in ek_model_invoke to ticks.txt (under `-icount shift=0` a tick is a fixed number of
 * instructions: the timer counts QEMU's virtual clock, which then advances 1 ns per instruction). A model that
 * streams its image (EK_STREAMED_INPUT) reads each window from input.bin itself, so the image is never in RAM;
 * the ticks those reads take are not counted. */
#include <stdio.h>

#include "ek_model.h"
#ifdef EK_SEMIHOSTING
#include "ek_startup.h"

/* MPS2's CMSDK APB timer 0: CTRL, VALUE, RELOAD; it counts VALUE down at the board's 25 MHz clock. */
static volatile uint32_t *const ek_timer = (volatile uint32_t *)0x40000000u;
#endif

static FILE *ek_in;
static long ek_record;
static int ek_read_failed;
#ifdef EK_SEMIHOSTING
static uint32_t ek_read_ticks; /* spent reading windows from the file: not the model's */
#endif

#ifdef EK_STREAMED_INPUT
void ek_model_read_window(int y, int x, int h, int w, int8_t *dst) {
#ifdef EK_SEMIHOSTING
    const uint32_t start = ek_timer[1];
#endif
    const size_t row = (size_t)w * EK_INPUT_C;
    for (int r = 0; r < h; ++r, dst += row) {
        const long at = ek_record * EK_INPUT_BYTES + ((long)(y + r) * EK_INPUT_W + x) * EK_INPUT_C;
        if (fseek(ek_in, at, SEEK_SET) != 0 || fread(dst, 1, row, ek_in) != row) ek_read_failed = 1;
    }
#ifdef EK_SEMIHOSTING
    ek_read_ticks += start - ek_timer[1];
#endif
}
#endif

int main(void) {
    FILE *out = fopen("output.bin", "wb");
    ek_in = fopen("input.bin", "rb");
    if (!ek_in || !out || fseek(ek_in, 0, SEEK_END) != 0) return 1;
    const long records = ftell(ek_in) / EK_INPUT_BYTES;
#ifdef EK_SEMIHOSTING
    uint32_t ticks = 0;
    ek_timer[2] = ek_timer[1] = 0xFFFFFFFFu;
    ek_timer[0] = 1u;
#endif
    for (ek_record = 0; ek_record < records; ++ek_record) {
#ifndef EK_STREAMED_INPUT
        if (fseek(ek_in, ek_record * EK_INPUT_BYTES, SEEK_SET) != 0 ||
            fread(ek_model_input(), 1, EK_INPUT_BYTES, ek_in) != EK_INPUT_BYTES) return 1;
#endif
#ifdef EK_SEMIHOSTING
        const uint32_t start = ek_timer[1];
        ek_model_invoke();
        ticks += start - ek_timer[1];
#else
        ek_model_invoke();
#endif
        if (ek_read_failed || fwrite(ek_model_output(), 1, EK_OUTPUT_BYTES, out) != EK_OUTPUT_BYTES) return 2;
    }
    fclose(ek_in);
    if (fclose(out) != 0) return 3;
#ifdef EK_SEMIHOSTING
    ticks -= ek_read_ticks;
    FILE *stack = fopen("stack.txt", "w");
    if (!stack || fprintf(stack, "%lu\n", (unsigned long)ek_stack_used()) < 0 || fclose(stack) != 0) return 4;
    FILE *timer = fopen("ticks.txt", "w");
    if (!timer || fprintf(timer, "%lu\n", (unsigned long)ticks) < 0 || fclose(timer) != 0) return 5;
#endif
    return 0;
}
