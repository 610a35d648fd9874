/* edgekit board firmware: runs the model forever. Replace with your application: fill ek_model_input() (a model
 * that streams its image asks ek_model_read_window for each window instead), call ek_model_invoke(), read
 * ek_model_output(). */
#include "ek_model.h"

#ifdef EK_STREAMED_INPUT
#include <string.h>

/* Stands in for the camera or flash the image comes from: a blank window. */
void ek_model_read_window(int y, int x, int h, int w, int8_t *dst) {
    (void)y;
    (void)x;
    memset(dst, 0, (size_t)h * w * EK_INPUT_C);
}
#endif

int main(void) {
    for (;;) ek_model_invoke();
}
