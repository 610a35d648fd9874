/* Minimal Cortex-M startup for the harness under QEMU: vector table, .data copy, FPU on, then newlib's crt0
 * (_start: .bss zeroed, semihosting handles opened, main, exit through semihosting). */
#include <stdint.h>

typedef void (*vector)(void);

extern uint32_t __stack_top, _sidata, _sdata, _edata;
extern void _start(void);

static void reset_handler(void) {
    const uint32_t *from = &_sidata;
    for (uint32_t *to = &_sdata; to < &_edata;) *to++ = *from++;
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: full access to CP10/CP11 (the FPU) */
    __asm volatile("dsb\n\tisb");
    _start();
}

static void fault_handler(void) {
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    (vector)&__stack_top, reset_handler, fault_handler, fault_handler, fault_handler, fault_handler,
    fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0, fault_handler, fault_handler,
};
