/* Minimal Cortex-M startup: vector table, .data copied and .bss zeroed, FPU on, the stack painted with a pattern
 * (so ek_stack_used() can tell its high-water mark), then main. With EK_SEMIHOSTING (the QEMU harness) newlib's
 * semihosting handles are opened first and main's result ends the emulation through semihosting. */
#include <stdint.h>
#include <stdlib.h>

#include "ek_startup.h"

typedef void (*vector)(void);

extern uint32_t __stack_top, __stack_limit, _sidata, _sdata, _edata, __bss_start__, __bss_end__;
extern int main(void);
#ifdef EK_SEMIHOSTING
extern void initialise_monitor_handles(void);
#endif

uint32_t ek_stack_used(void) {
    const uint32_t *word = &__stack_limit;
    while (word < &__stack_top && *word == EK_STACK_PAINT) ++word;
    return (uint32_t)((uintptr_t)&__stack_top - (uintptr_t)word);
}

static void reset_handler(void) {
    const uint32_t *from = &_sidata;
    for (uint32_t *to = &_sdata; to < &_edata;) *to++ = *from++;
    for (uint32_t *to = &__bss_start__; to < &__bss_end__;) *to++ = 0;
    uintptr_t sp; /* everything below this frame (less a margin) is not in use yet */
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (volatile uint32_t *to = &__stack_limit; (uintptr_t)to < sp - 64;) *to++ = EK_STACK_PAINT;
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: full access to CP10/CP11 (the FPU) */
    __asm volatile("dsb\n\tisb");
#ifdef EK_SEMIHOSTING
    initialise_monitor_handles();
    exit(main());
#else
    main();
    for (;;) {
    }
#endif
}

static void fault_handler(void) {
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    (vector)&__stack_top, reset_handler, fault_handler, fault_handler, fault_handler, fault_handler,
    fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0, fault_handler, fault_handler,
};
