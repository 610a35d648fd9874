/* edgekit board firmware: runs the model forever. Replace with your application: fill ek_model_input(), call
 * ek_model_invoke(), read ek_model_output(). */
#include "ek_model.h"

int main(void) {
    for (;;) ek_model_invoke();
}
