/* edgekit Cortex-M startup: the stack pattern painted at reset and the measure of what the firmware used. */
#ifndef EK_STARTUP_H
#define EK_STARTUP_H

#include <stdint.h>

#define EK_STACK_PAINT 0x5AA5C33Cu

/* Bytes of stack touched since reset: from the top down to the deepest word no longer holding the pattern. */
uint32_t ek_stack_used(void);

#endif
