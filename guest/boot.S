/*
 * Multiboot (v1) entry for the gangway test guest: header, our own flat GDT (the spec
 * leaves GDTR undefined, and interrupts reload CS), a stack in .bss, then kmain(magic, mbi).
 * Also the interrupt stubs: one per vector 0..47, all funnelled into isr_dispatch(frame).
 */
	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0x00000003        /* page-align modules, give memory info + map */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .text
	.global _start
_start:
	cli
	mov %eax, %edi                   /* multiboot magic */
	mov %ebx, %esi                   /* multiboot info (physical) */
	lgdt gdt_desc
	ljmp $0x08, $1f
1:	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %fs
	mov %ax, %gs
	mov %ax, %ss
	mov $stack_top, %esp
	push %esi
	push %edi
	call kmain
2:	cli
	hlt
	jmp 2b

/* Vectors that push an error code themselves; the others get a dummy 0. */
	.macro ISR_NOERR n
isr\n:	push $0
	push $\n
	jmp isr_common
	.endm
	.macro ISR_ERR n
isr\n:	push $\n
	jmp isr_common
	.endm

	.irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
	ISR_NOERR \n
	.endr
	.irp n, 8,10,11,12,13,14,17,21,29,30
	ISR_ERR \n
	.endr
	.irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	ISR_NOERR \n
	.endr

isr_common:
	pusha
	cld
	push %esp                        /* struct frame * */
	call isr_dispatch
	add $4, %esp
	popa
	add $8, %esp                     /* vector + error code */
	iret

	.section .rodata
	.global isr_table
	.align 4
isr_table:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	.long isr\n
	.endr

	.align 8
gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF         /* 0x08: flat 32-bit code */
	.quad 0x00CF92000000FFFF         /* 0x10: flat 32-bit data */
gdt_desc:
	.word gdt_desc - gdt - 1
	.long gdt

	.section .bss
	.align 16
stack_bottom:
	.skip 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
