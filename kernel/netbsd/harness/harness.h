/*
 * harness.h: what the test cases (cases.c) see of the stand-in kernel
 * (kstub.c): the fake PCI bus and functions, "system calls" on
 * pciuser's files, and the counters that the stand-ins keep.
 */
#ifndef _HARNESS_HARNESS_H_
#define	_HARNESS_HARNESS_H_

/* Slots on the fake bus 0. */
#define	H_DEV_NIC	3	/* no kernel driver: claimable */
#define	H_DEV_VICTIM	4	/* a kernel driver owns it */
#define	H_DEV_SLOW	5	/* the slow driver attaches at a rescan */

/* The fake NIC's BARs (all assigned, page aligned). */
#define	H_BAR0_BASE	0xfeb00000ULL	/* 128 KiB memory, 64-bit */
#define	H_BAR0_SIZE	0x20000ULL
#define	H_BAR2_BASE	0xc000ULL	/* 32 bytes I/O */
#define	H_BAR2_SIZE	0x20ULL
#define	H_BAR3_BASE	0xfebf0000ULL	/* 16 KiB memory: MSI-X */
#define	H_BAR3_SIZE	0x4000ULL
#define	H_MSIX_TABLE	0x1000ULL	/* in BAR3: 8 entries */
#define	H_MSIX_NVEC	8
#define	H_MSIX_PBA	0x3000ULL	/* in BAR3 */
#define	H_MSI_NVEC	4

struct file;
struct uvm_object;

/* Boot the stand-in kernel: bus pci0 with its functions. */
void	h_boot(void);
/* Reset global state between fuzz inputs (before h_boot). */
void	h_reset(void);
/* Whole-case checks: leaks of kmem, tags, locks held; 0 if clean. */
int	h_shutdown_check(char *, size_t);

/* "System calls" on a /dev/pci0 descriptor. */
int	h_open(int, struct file **);
int	h_ioctl(struct file *, unsigned long, void *);
int	h_close(struct file *);
int	h_read(struct file *, void *, size_t, size_t *, int);
int	h_poll(struct file *, int);
int	h_mmap(struct file *, uint64_t, size_t, int, int,
	    struct uvm_object **);
void	h_munmap(struct uvm_object *);
int	h_fault(struct uvm_object *, uint64_t, int, uint64_t *);
int	h_kqueue(struct file *, struct knote **);
void	h_kqueue_drop(struct knote *);
int	h_detach(int);
/* autoconf: rescan one slot; the driver owning one; detach it. */
int	h_rescan(int);
const char *h_driver_of(int);
int	h_driver_detach(int, int);
int	h_sysctl(const char *, uint64_t *, const uint64_t *);

/* The fake NIC. */
uint32_t h_cfg_read(int, int);
void	h_cfg_write(int, int, uint32_t);
void	h_nic_sticky_master(bool);	/* bus mastering cannot be turned off */
void	h_nic_raise(int);		/* raise MSI/MSI-X vector, or INTx */
uint32_t h_nic_bar_read4(int, uint64_t);

/* Counters kept by the stand-ins. */
extern int	h_kauth_deny;
uint64_t	h_bar_kva(void);	/* memory space mapped into kernel VA */
int	h_user_mapped(uint64_t);	/* user mappings of a physical page */
extern long	h_nphys;		/* physical pages bus_dma can hand out */
extern long	h_phys_pages;		/* physical pages allocated now */
extern long	h_leaked_pages;		/* left allocated by bus_dma EFBIG */
extern long	h_sizing_with_decode;	/* BAR sized while decoding */
extern long	h_freed_while_master;	/* dmamem freed, device mastering */
extern long	h_msix_maps;		/* msipic's MSI-X table mappings */
extern long	h_softints_run;
extern int	h_pmap_fail;		/* pmap_enter fails this many times */
/*
 * Run where the slow driver's attach or detach sleeps, with the kernel
 * lock released: a case makes it block until it lets it go.
 */
#define	H_GATE_ATTACH	1
#define	H_GATE_DETACH	2
extern void	(*h_gate_hook)(int);
extern long	h_slow_attached;	/* slow driver instances attached */

/* For two-thread cases. */
void	h_thread_begin(void);

#endif
