/*
 * kstub.h: small stand-ins for the NetBSD kernel interfaces that
 * sys/dev/pci/pci_user.c uses, so that the file compiles and runs
 * unchanged in Linux userland (see harness/README.md).  Written for
 * upci from the documented interfaces (man pages bus_space(9),
 * bus_dma(9), pci(9), pci_msi(9), kmem(9), mutex(9), condvar(9),
 * rwlock(9), uvm(9), kqueue(9), kauth(9)); nothing here is copied
 * from NetBSD.
 *
 * Only compiler-provided headers and <errno.h> are included, so that
 * the harness's include/ directory (which shadows <sys/...>) never
 * meets glibc's headers (whose <features.h> includes <sys/cdefs.h>) in pci_user.c.  Error numbers are the host's:
 * the tests compare names, not values.
 */
#ifndef _HARNESS_KSTUB_H_
#define	_HARNESS_KSTUB_H_

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <asm-generic/errno.h>	/* Linux's values, as <errno.h> has */

struct uio;
struct proc;

/* Pretend to be NetBSD 10, so the NetBSD 10 branches are the ones run. */
#define	__NetBSD_Prereq__(a, b, c)	1
#ifndef _LP64
#error "the harness models an LP64 (amd64) kernel"
#endif

#ifndef ERESTART
#define	ERESTART	(-3)
#endif

/* sys/cdefs.h */
#define	__KERNEL_RCSID(n, s)	struct __hack
#define	__arraycount(a)		(sizeof(a) / sizeof((a)[0]))
#define	__unused		__attribute__((__unused__))

/* sys/types.h */
typedef unsigned char	u_char;
typedef unsigned short	u_short;
typedef unsigned int	u_int;
typedef unsigned long	u_long;
typedef long		ssize_t;
typedef long		off_t;
typedef unsigned long	dev_t;
typedef unsigned int	uid_t;
typedef unsigned int	gid_t;
typedef unsigned int	mode_t;
typedef unsigned long	vaddr_t;
typedef unsigned long	paddr_t;
typedef unsigned long	psize_t;
typedef unsigned long	vsize_t;
typedef long		voff_t;
typedef int		vm_prot_t;
typedef uint64_t	u_quad_t;
typedef int64_t		quad_t;
#define	minor(d)	((int)((d) & 0xff))
#define	makedev(x, y)	((dev_t)(((x) << 8) | (y)))

/* sys/param.h */
#define	PAGE_SHIFT	12
#define	PAGE_SIZE	(1UL << PAGE_SHIFT)
#define	PAGE_MASK	(PAGE_SIZE - 1)
#define	trunc_page(x)	((x) & ~PAGE_MASK)
#define	round_page(x)	(((x) + PAGE_MASK) & ~PAGE_MASK)
#define	ctob(x)		((x) << PAGE_SHIFT)
#ifndef MIN
#define	MIN(a, b)	((a) < (b) ? (a) : (b))
#define	MAX(a, b)	((a) > (b) ? (a) : (b))
#endif
#define	powerof2(x)	((((x) - 1) & (x)) == 0)
#define	howmany(x, y)	(((x) + ((y) - 1)) / (y))
extern long physmem;

/* sys/queue.h (LIST and SLIST only) */
#define	LIST_HEAD(name, type)	struct name { struct type *lh_first; }
#define	LIST_HEAD_INITIALIZER(head)	{ NULL }
#define	LIST_ENTRY(type)	struct { struct type *le_next; struct type **le_prev; }
#define	LIST_FIRST(head)	((head)->lh_first)
#define	LIST_NEXT(elm, f)	((elm)->f.le_next)
#define	LIST_EMPTY(head)	((head)->lh_first == NULL)
#define	LIST_INIT(head)		do { (head)->lh_first = NULL; } while (0)
#define	LIST_INSERT_HEAD(head, elm, f) do {				\
	if (((elm)->f.le_next = (head)->lh_first) != NULL)		\
		(head)->lh_first->f.le_prev = &(elm)->f.le_next;	\
	(head)->lh_first = (elm);					\
	(elm)->f.le_prev = &(head)->lh_first;				\
} while (0)
#define	LIST_REMOVE(elm, f) do {					\
	if ((elm)->f.le_next != NULL)					\
		(elm)->f.le_next->f.le_prev = (elm)->f.le_prev;		\
	*(elm)->f.le_prev = (elm)->f.le_next;				\
	(elm)->f.le_next = (void *)1;	/* poison, as QUEUEDEBUG */	\
	(elm)->f.le_prev = (void *)1;					\
} while (0)
#define	LIST_FOREACH(v, head, f)					\
	for ((v) = LIST_FIRST(head); (v) != NULL; (v) = LIST_NEXT(v, f))
#define	LIST_FOREACH_SAFE(v, head, f, t)				\
	for ((v) = LIST_FIRST(head);					\
	    (v) != NULL && ((t) = LIST_NEXT(v, f), 1); (v) = (t))
#define	SLIST_HEAD(name, type)	struct name { struct type *slh_first; }
#define	SLIST_ENTRY(type)	struct { struct type *sle_next; }

/* sys/systm.h and friends */
void	panic(const char *, ...) __attribute__((__noreturn__, __format__(__printf__, 1, 2)));
int	printf(const char *, ...) __attribute__((__format__(__printf__, 1, 2)));
int	snprintf(char *, size_t, const char *, ...) __attribute__((__format__(__printf__, 3, 4)));
void	*memset(void *, int, size_t);
void	*memcpy(void *, const void *, size_t);
#define	KASSERT(e)	((e) ? (void)0 : \
	panic("kernel diagnostic assertion \"%s\" failed: file \"%s\", line %d", \
	#e, __FILE__, __LINE__))
#define	KASSERTMSG(e, msg, ...)	((e) ? (void)0 : \
	panic("kernel diagnostic assertion \"%s\" failed: " msg, #e, ##__VA_ARGS__))
int	copyin(const void *, void *, size_t);
int	copyout(const void *, void *, size_t);
int	uiomove(void *, size_t, struct uio *);

/* kernel lock */
void	harness_kernel_lock(void);
void	harness_kernel_unlock(void);
bool	harness_kernel_locked(void);
#define	KERNEL_LOCK(n, l)	harness_kernel_lock()
#define	KERNEL_UNLOCK_ONE(l)	harness_kernel_unlock()
#define	KERNEL_LOCKED_P()	harness_kernel_locked()

/* sys/once.h */
typedef struct { int o_done; } once_t;
#define	ONCE_DECL(o)	once_t o = { 0 }
int	_run_once(once_t *, int (*)(void));
#define	RUN_ONCE(o, fn)	_run_once((o), (fn))

/* sys/mutex.h, sys/condvar.h, sys/rwlock.h: see kstub.c (LOCKDEBUG) */
#define	IPL_NONE	0
#define	IPL_SOFTNET	2
#define	IPL_VM		6
#define	IPL_SCHED	7
#define	IPL_HIGH	8
typedef int	kmutex_type_t;
#define	MUTEX_DEFAULT	0
#define	MUTEX_SPIN	1
typedef struct kmutex {
	void		*mtx_impl;	/* struct hlock *, kstub.c */
} kmutex_t;
typedef struct kcondvar {
	void		*cv_impl;
} kcondvar_t;
typedef struct krwlock {
	void		*rw_impl;
} krwlock_t;
typedef enum { RW_READER, RW_WRITER } krw_t;
void	mutex_init(kmutex_t *, kmutex_type_t, int);
void	mutex_destroy(kmutex_t *);
void	mutex_enter(kmutex_t *);
void	mutex_exit(kmutex_t *);
void	mutex_spin_enter(kmutex_t *);
void	mutex_spin_exit(kmutex_t *);
int	mutex_owned(const kmutex_t *);
void	cv_init(kcondvar_t *, const char *);
void	cv_destroy(kcondvar_t *);
void	cv_wait(kcondvar_t *, kmutex_t *);
int	cv_wait_sig(kcondvar_t *, kmutex_t *);
void	cv_broadcast(kcondvar_t *);
void	cv_signal(kcondvar_t *);
void	rw_init(krwlock_t *);
void	rw_destroy(krwlock_t *);
void	rw_enter(krwlock_t *, krw_t);
void	rw_exit(krwlock_t *);

/* sys/kmem.h */
typedef int	km_flag_t;
#define	KM_SLEEP	1
#define	KM_NOSLEEP	2
void	*kmem_alloc(size_t, km_flag_t);
void	*kmem_zalloc(size_t, km_flag_t);
void	kmem_free(void *, size_t);

/* sys/kauth.h */
typedef struct kauth_cred *kauth_cred_t;
#define	KAUTH_MACHDEP_UNMANAGEDMEM	1
kauth_cred_t	kauth_cred_get(void);
uid_t	kauth_cred_geteuid(kauth_cred_t);
gid_t	kauth_cred_getegid(kauth_cred_t);
int	kauth_authorize_machdep(kauth_cred_t, int, void *, void *, void *,
	    void *);

/* sys/proc.h */
struct lwp { int l_dummy; };
extern struct lwp *curlwp;
struct proc;

/* sys/uio.h */
enum uio_rw { UIO_READ, UIO_WRITE };
struct uio {
	char		*uio_buf;	/* harness: one flat user buffer */
	ssize_t		uio_resid;
	off_t		uio_offset;
	enum uio_rw	uio_rw;
	bool		uio_fault;	/* harness: copy fails */
};

/* sys/stat.h */
#define	S_IFCHR		0020000
#define	S_IRUSR		0000400
#define	S_IWUSR		0000200
struct stat {
	mode_t		st_mode;
	dev_t		st_rdev;
	uid_t		st_uid;
	gid_t		st_gid;
};

/* sys/fcntl.h, sys/mman.h, sys/poll.h */
#define	FREAD		0x0001
#define	FWRITE		0x0002
#define	FNONBLOCK	0x0004
#define	MAP_SHARED	0x0001
#define	MAP_PRIVATE	0x0002
#define	POLLIN		0x0001
#define	POLLRDNORM	0x0040
#define	POLLERR		0x0008
#define	POLLHUP		0x0010

/* sys/ioccom.h (NetBSD's encoding), sys/ioctl.h */
#define	IOCPARM_MASK	0x1fff
#define	IOCPARM_SHIFT	16
#define	IOCGROUP_SHIFT	8
#define	IOCPARM_LEN(x)	(((x) >> IOCPARM_SHIFT) & IOCPARM_MASK)
#define	IOCGROUP(x)	(((x) >> IOCGROUP_SHIFT) & 0xff)
#define	IOC_VOID	(unsigned long)0x20000000
#define	IOC_OUT		(unsigned long)0x40000000
#define	IOC_IN		(unsigned long)0x80000000
#define	IOC_INOUT	(IOC_IN | IOC_OUT)
#define	_IOC(inout, group, num, len) \
	((inout) | (((len) & IOCPARM_MASK) << IOCPARM_SHIFT) | \
	((group) << IOCGROUP_SHIFT) | (num))
#define	_IO(g, n)	_IOC(IOC_VOID, (g), (n), 0)
#define	_IOR(g, n, t)	_IOC(IOC_OUT, (g), (n), sizeof(t))
#define	_IOW(g, n, t)	_IOC(IOC_IN, (g), (n), sizeof(t))
#define	_IOWR(g, n, t)	_IOC(IOC_INOUT, (g), (n), sizeof(t))
#define	FIONBIO		_IOW('f', 126, int)
#define	FIOASYNC	_IOW('f', 125, int)

/* sys/file.h, sys/filedesc.h */
struct file;
struct knote;
struct uvm_object;
struct fileops {
	const char *fo_name;
	int	(*fo_read)(struct file *, off_t *, struct uio *, kauth_cred_t,
		    int);
	int	(*fo_write)(struct file *, off_t *, struct uio *,
		    kauth_cred_t, int);
	int	(*fo_ioctl)(struct file *, u_long, void *);
	int	(*fo_fcntl)(struct file *, u_int, void *);
	int	(*fo_poll)(struct file *, int);
	int	(*fo_stat)(struct file *, struct stat *);
	int	(*fo_close)(struct file *);
	int	(*fo_kqfilter)(struct file *, struct knote *);
	void	(*fo_restart)(struct file *);
	int	(*fo_mmap)(struct file *, off_t *, size_t, int, int *, int *,
		    struct uvm_object **, int *);
};
struct file {
	const struct fileops *f_ops;
	void		*f_data;
	int		f_flag;
	kauth_cred_t	f_cred;
};
int	fbadop_write(struct file *, off_t *, struct uio *, kauth_cred_t, int);
int	fnullop_fcntl(struct file *, u_int, void *);
void	fnullop_restart(struct file *);
int	fd_allocfile(struct file **, int *);
int	fd_clone(struct file *, int, int, const struct fileops *, void *);

/* sys/event.h, sys/select.h */
#define	EVFILT_READ	0
#define	EVFILT_WRITE	1
#define	EV_EOF		0x8000
#define	NOTE_SUBMIT	0x01000000
#define	FILTEROP_ISFD	0x01
#define	FILTEROP_MPSAFE	0x02
struct filterops {
	uint32_t	f_flags;
	int	(*f_attach)(struct knote *);
	void	(*f_detach)(struct knote *);
	int	(*f_event)(struct knote *, long);
};
struct knote {
	struct knote	*kn_selnext;
	const struct filterops *kn_fop;
	void		*kn_hook;
	int		kn_filter;
	int		kn_flags;
	int64_t		kn_data;
	int		kn_fired;	/* harness: f_event returned 1 */
};
struct selinfo {
	struct knote	*sel_klist;	/* harness: singly linked */
	int		sel_collision;
	int		sel_inited;
	int		sel_notified;	/* harness: selnotify count */
	int		sel_recorded;	/* harness: selrecord count */
};
void	selinit(struct selinfo *);
void	seldestroy(struct selinfo *);
void	selrecord(struct lwp *, struct selinfo *);
void	selnotify(struct selinfo *, int, long);
void	selrecord_knote(struct selinfo *, struct knote *);
void	selremove_knote(struct selinfo *, struct knote *);
void	knote_set_eof(struct knote *, uint32_t);

/* sys/conf.h, sys/device.h */
struct cdevsw { int d_dummy; };
int	cdev_ioctl(dev_t, u_long, void *, int, struct lwp *);
typedef struct device *device_t;
struct cfdriver { const char *cd_name; };
extern struct cfdriver pci_cd;
void	*device_lookup_private(struct cfdriver *, int);
#define	DETACH_FORCE	0x01
/* autoconf(9): config_found's match/attach and config_detach (kstub.c) */
typedef struct cfdata *cfdata_t;
struct cfattach {
	const char	*ca_name;
	size_t		ca_devsize;
	int		(*ca_match)(device_t, cfdata_t, void *);
	void		(*ca_attach)(device_t, device_t, void *);
	int		(*ca_detach)(device_t, int);
	int		(*ca_activate)(device_t, int);
};
#define	CFATTACH_DECL_NEW(name, ddsize, matfn, attfn, detfn, actfn)	\
	struct cfattach name##_ca = { #name, ddsize, matfn, attfn, detfn, actfn }
void	*device_private(device_t);
device_t device_parent(device_t);
int	device_locator(device_t, u_int);
typedef struct { int di_next; } deviter_t;
device_t deviter_first(deviter_t *, int);
device_t deviter_next(deviter_t *);
void	deviter_release(deviter_t *);
int	config_detach(device_t, int);
#define	aprint_naive(...)	((void)0)
#define	aprint_normal(...)	((void)0)

/* sys/intr.h */
#define	SOFTINT_SERIAL	3
#define	SOFTINT_MPSAFE	0x100
void	*softint_establish(u_int, void (*)(void *), void *);
void	softint_disestablish(void *);
void	softint_schedule(void *);

/* sys/sysctl.h */
struct sysctlnode {
	void		*sysctl_data;
};
struct sysctllog;
#define	SYSCTLFN_ARGS	const int *name, u_int namelen, void *oldp, \
	size_t *oldlenp, const void *newp, size_t newlen, \
	const int *oname, struct lwp *l, const struct sysctlnode *rnode
#define	SYSCTLFN_CALL(node)	name, namelen, oldp, oldlenp, newp, newlen, \
	oname, l, node
#define	SYSCTL_SETUP(name, desc)					\
	void name(struct sysctllog **);					\
	void name(struct sysctllog **clog)
#define	SYSCTL_DESCR(s)	s
#define	CTLFLAG_PERMANENT	0x01
#define	CTLFLAG_READONLY	0x02
#define	CTLFLAG_READWRITE	0x04
#define	CTLTYPE_NODE	1
#define	CTLTYPE_QUAD	2
#define	CTL_HW		6
#define	CTL_CREATE	(-1)
#define	CTL_EOL		(-2)
int	sysctl_lookup(SYSCTLFN_ARGS);
int	sysctl_createv(struct sysctllog **, int, const struct sysctlnode **,
	    const struct sysctlnode **, int, int, const char *, const char *,
	    int (*)(SYSCTLFN_ARGS), u_quad_t, void *, size_t, ...);

/* sys/bus.h: bus_space */
typedef uint64_t	bus_addr_t;
typedef uint64_t	bus_size_t;
typedef struct harness_bus_space *bus_space_tag_t;
typedef uintptr_t	bus_space_handle_t;
#define	BUS_SPACE_MAP_CACHEABLE		0x01
#define	BUS_SPACE_MAP_LINEAR		0x02
#define	BUS_SPACE_MAP_PREFETCHABLE	0x04
int	bus_space_map(bus_space_tag_t, bus_addr_t, bus_size_t, int,
	    bus_space_handle_t *);
void	bus_space_unmap(bus_space_tag_t, bus_space_handle_t, bus_size_t);
/* x86's reservations: the extent without kernel VA (sys/bus.h). */
#define	__HAVE_NEW_STYLE_BUS_H
typedef struct bus_space_reservation {
	bus_addr_t	_bsr_start;
	bus_size_t	_bsr_size;
} bus_space_reservation_t;
int	bus_space_reserve(bus_space_tag_t, bus_addr_t, bus_size_t, int,
	    bus_space_reservation_t *);
void	bus_space_release(bus_space_tag_t, bus_space_reservation_t *);
int	bus_space_reservation_map(bus_space_tag_t, bus_space_reservation_t *,
	    int, bus_space_handle_t *);
void	bus_space_reservation_unmap(bus_space_tag_t, bus_space_handle_t,
	    bus_size_t);
paddr_t	bus_space_mmap(bus_space_tag_t, bus_addr_t, off_t, int, int);
uint8_t	bus_space_read_1(bus_space_tag_t, bus_space_handle_t, bus_size_t);
uint16_t bus_space_read_2(bus_space_tag_t, bus_space_handle_t, bus_size_t);
uint32_t bus_space_read_4(bus_space_tag_t, bus_space_handle_t, bus_size_t);
uint64_t bus_space_read_8(bus_space_tag_t, bus_space_handle_t, bus_size_t);
void	bus_space_write_1(bus_space_tag_t, bus_space_handle_t, bus_size_t,
	    uint8_t);
void	bus_space_write_2(bus_space_tag_t, bus_space_handle_t, bus_size_t,
	    uint16_t);
void	bus_space_write_4(bus_space_tag_t, bus_space_handle_t, bus_size_t,
	    uint32_t);
void	bus_space_write_8(bus_space_tag_t, bus_space_handle_t, bus_size_t,
	    uint64_t);

/* sys/bus.h: bus_dma */
typedef struct harness_dma_tag *bus_dma_tag_t;
typedef struct {
	bus_addr_t	ds_addr;
	bus_size_t	ds_len;
} bus_dma_segment_t;
struct bus_dmamap {
	bus_size_t	_dm_size;
	int		_dm_segcnt;
	bus_size_t	_dm_maxsegsz;
	bus_size_t	_dm_boundary;
	bus_size_t	dm_maxsegsz;
	bus_size_t	dm_mapsize;
	int		dm_nsegs;
	bus_dma_segment_t dm_segs[1];	/* _dm_segcnt of them */
};
typedef struct bus_dmamap *bus_dmamap_t;
#define	BUS_DMA_WAITOK		0x000
#define	BUS_DMA_NOWAIT		0x001
#define	BUS_DMA_COHERENT	0x004
#define	BUS_DMA_PREFETCHABLE	0x008
#define	BUS_DMA_READ		0x100
#define	BUS_DMA_WRITE		0x200
#define	BUS_DMASYNC_PREREAD	0x01
#define	BUS_DMASYNC_POSTREAD	0x02
#define	BUS_DMASYNC_PREWRITE	0x04
#define	BUS_DMASYNC_POSTWRITE	0x08
int	bus_dmamem_alloc(bus_dma_tag_t, bus_size_t, bus_size_t, bus_size_t,
	    bus_dma_segment_t *, int, int *, int);
void	bus_dmamem_free(bus_dma_tag_t, bus_dma_segment_t *, int);
int	bus_dmamem_map(bus_dma_tag_t, bus_dma_segment_t *, int, size_t,
	    void **, int);
void	bus_dmamem_unmap(bus_dma_tag_t, void *, size_t);
paddr_t	bus_dmamem_mmap(bus_dma_tag_t, bus_dma_segment_t *, int, off_t, int,
	    int);
int	bus_dmamap_create(bus_dma_tag_t, bus_size_t, int, bus_size_t,
	    bus_size_t, int, bus_dmamap_t *);
void	bus_dmamap_destroy(bus_dma_tag_t, bus_dmamap_t);
int	bus_dmamap_load(bus_dma_tag_t, bus_dmamap_t, void *, bus_size_t,
	    struct proc *, int);
void	bus_dmamap_unload(bus_dma_tag_t, bus_dmamap_t);
void	bus_dmamap_sync(bus_dma_tag_t, bus_dmamap_t, bus_addr_t, bus_size_t,
	    int);
int	bus_dmatag_subregion(bus_dma_tag_t, bus_addr_t, bus_addr_t,
	    bus_dma_tag_t *, int);
void	bus_dmatag_destroy(bus_dma_tag_t);

/* uvm */
#define	VM_PROT_NONE	0
#define	VM_PROT_READ	1
#define	VM_PROT_WRITE	2
#define	VM_PROT_EXECUTE	4
#define	UVM_ADV_RANDOM	1
#define	PGO_ALLPAGES	0x010
#define	PGO_DONTCARE	((struct vm_page *)-1L)
#define	PMAP_CANFAIL	0x08000000
struct vm_page;
struct vm_amap;
struct pmap;
struct uvm_faultinfo;
struct uvm_pagerops {
	void	(*pgo_reference)(struct uvm_object *);
	void	(*pgo_detach)(struct uvm_object *);
	int	(*pgo_fault)(struct uvm_faultinfo *, vaddr_t,
		    struct vm_page **, int, int, vm_prot_t, int);
};
struct uvm_object {
	krwlock_t	*vmobjlock;
	const struct uvm_pagerops *pgops;
	int		uo_refs;
	krwlock_t	uo_lock;	/* harness: the lock vmobjlock names */
};
struct vm_aref { struct vm_amap *ar_amap; };
struct vm_map_entry {
	vaddr_t		start, end;
	union { struct uvm_object *uvm_obj; } object;
	voff_t		offset;
	vm_prot_t	protection;
	int		etype;		/* harness: 1 = copy-on-write */
	struct vm_aref	aref;
};
struct vm_map { struct pmap *pmap; };
struct uvm_faultinfo {
	struct vm_map	*orig_map;
	struct vm_map_entry *entry;
};
#define	UVM_ET_ISCOPYONWRITE(e)	((e)->etype & 1)
void	uvm_obj_init(struct uvm_object *, const struct uvm_pagerops *, bool,
	    u_int);
void	uvm_obj_destroy(struct uvm_object *, bool);
struct uvm_object *udv_attach(dev_t, vm_prot_t, voff_t, vsize_t);
void	uvmfault_unlockall(struct uvm_faultinfo *, struct vm_amap *,
	    struct uvm_object *);
void	uvm_wait(const char *);
int	pmap_enter(struct pmap *, vaddr_t, paddr_t, vm_prot_t, u_int);
void	pmap_update(struct pmap *);
/* x86's pv tracking of unmanaged pages (pmap.h) */
#define	__HAVE_PMAP_PV_TRACK	1
void	pmap_pv_track(paddr_t, psize_t);
void	pmap_pv_untrack(paddr_t, psize_t);
void	pmap_pv_protect(paddr_t, vm_prot_t);
#define	pmap_phys_address(c)	((paddr_t)(c) << PAGE_SHIFT)
#define	pmap_mmap_flags(c)	0

/* dev/pci/pcireg.h (the registers pci_user.c names) */
typedef uint32_t	pcireg_t;
#define	PCI_ID_REG			0x00
#define	PCI_VENDOR(id)			((id) & 0xffff)
#define	PCI_COMMAND_STATUS_REG		0x04
#define	PCI_COMMAND_IO_ENABLE		0x00000001
#define	PCI_COMMAND_MEM_ENABLE		0x00000002
#define	PCI_COMMAND_MASTER_ENABLE	0x00000004
#define	PCI_COMMAND_INTERRUPT_DISABLE	0x00000400
#define	PCI_STATUS_INT_STATUS		0x00080000
#define	PCI_STATUS_CAPLIST_SUPPORT	0x00100000
#define	PCI_CLASS_REG			0x08
#define	PCI_BHLC_REG			0x0c
#define	PCI_HDRTYPE_TYPE(bhlcr)		(((bhlcr) >> 16) & 0x7f)
#define	PCI_HDRTYPE_MULTIFN(bhlcr)	((((bhlcr) >> 16) & 0x80) != 0)
#define	PCI_MAPREG_START		0x10
#define	PCI_MAPREG_END			0x28
#define	PCI_MAPREG_TYPE(mr)		((mr) & 0x1)
#define	PCI_MAPREG_TYPE_MEM		0x0
#define	PCI_MAPREG_TYPE_IO		0x1
#define	PCI_MAPREG_MEM_TYPE(mr)		((mr) & 0x6)
#define	PCI_MAPREG_MEM_TYPE_32BIT	0x0
#define	PCI_MAPREG_MEM_TYPE_64BIT	0x4
#define	PCI_MAPREG_MEM_PREFETCHABLE(mr)	(((mr) & 0x8) != 0)
#define	PCI_SUBSYS_ID_REG		0x2c
#define	PCI_CAPLISTPTR_REG		0x34
#define	PCI_CAPLIST_PTR(r)		((r) & 0xff)
#define	PCI_CAPLIST_CAP(r)		((r) & 0xff)
#define	PCI_CAPLIST_NEXT(r)		(((r) >> 8) & 0xff)
#define	PCI_INTERRUPT_REG		0x3c
#define	PCI_CAP_PWRMGMT			0x01
#define	PCI_CAP_MSI			0x05
#define	PCI_CAP_VENDSPEC		0x09
#define	PCI_CAP_PCIEXPRESS		0x10
#define	PCI_CAP_MSIX			0x11
#define	PCI_PMCSR			0x04
#define	PCIE_DCSR			0x08
#define	PCIE_LCSR			0x10
#define	PCIE_DCSR2			0x28
#define	PCI_MSIX_CTL			0x00
#define	PCI_MSIX_CTL_TBLSIZE_MASK	0x07ff0000
#define	PCI_MSIX_CTL_TBLSIZE(ofs)	((((ofs) & PCI_MSIX_CTL_TBLSIZE_MASK) >> 16) + 1)
#define	PCI_MSIX_TBLOFFSET		0x04
#define	PCI_MSIX_PBAOFFSET		0x08
#define	PCI_MSIX_TBLBIR_MASK		0x00000007
#define	PCI_MSIX_TBLOFFSET_MASK		0xfffffff8
#define	PCI_MSIX_TABLE_ENTRY_SIZE	16
#define	PCI_CONF_SIZE			0x100
#define	PCI_EXTCONF_SIZE		0x1000
#define	PCI_EXTCAPLIST_BASE		0x100
#define	PCI_EXTCAPLIST_CAP(ecr)		((ecr) & 0xffff)
#define	PCI_EXTCAPLIST_NEXT(ecr)	(((ecr) >> 20) & 0xfff)
#define	PCI_EXTCAP_AER			0x0001

/* dev/pci/pcivar.h */
typedef struct harness_pci_chipset *pci_chipset_tag_t;
typedef uint64_t	pcitag_t;
typedef uint64_t	pci_intr_handle_t;
typedef enum {
	PCI_INTR_TYPE_INTX = 0,
	PCI_INTR_TYPE_MSI,
	PCI_INTR_TYPE_MSIX,
	PCI_INTR_TYPE_SIZE,
} pci_intr_type_t;
#define	PCI_INTR_MPSAFE		1
#define	PCI_FLAGS_IO_OKAY	0x01
#define	PCI_FLAGS_MEM_OKAY	0x02
struct pci_attach_args {
	bus_space_tag_t	pa_iot;
	bus_space_tag_t	pa_memt;
	bus_dma_tag_t	pa_dmat;
	bus_dma_tag_t	pa_dmat64;
	pci_chipset_tag_t pa_pc;
	int		pa_flags;
	u_int		pa_bus;
	u_int		pa_device;
	u_int		pa_function;
	pcitag_t	pa_tag;
	pcireg_t	pa_id, pa_class;
	u_int		pa_intrpin;
};
struct pci_conf_state {
	pcireg_t	reg[16];	/* the type 0 header */
};
struct pci_child {
	device_t	c_dev;
	struct pci_conf_state c_conf;	/* restored when c_dev detaches */
};
void	pci_conf_capture(pci_chipset_tag_t, pcitag_t, struct pci_conf_state *);
void	pci_conf_restore(pci_chipset_tag_t, pcitag_t, struct pci_conf_state *);
struct pci_softc {
	device_t	sc_dev;
	pci_chipset_tag_t sc_pc;
	int		sc_bus;
	int		sc_maxndevs;
	struct pci_child sc_devices[32 * 8];
};
#define	PCI_SC_DEVICESC(d, f)	sc_devices[(d) * 8 + (f)]
pcireg_t pci_conf_read(pci_chipset_tag_t, pcitag_t, int);
void	pci_conf_write(pci_chipset_tag_t, pcitag_t, int, pcireg_t);
pcitag_t pci_make_tag(pci_chipset_tag_t, int, int, int);
int	pci_probe_device(struct pci_softc *, pcitag_t,
	    int (*)(const struct pci_attach_args *), struct pci_attach_args *);
int	pci_mapreg_probe(pci_chipset_tag_t, pcitag_t, int, pcireg_t *);
int	pci_mapreg_info(pci_chipset_tag_t, pcitag_t, int, pcireg_t,
	    bus_addr_t *, bus_size_t *, int *);
int	pci_get_capability(pci_chipset_tag_t, pcitag_t, int, int *,
	    pcireg_t *);
int	pci_msi_count(pci_chipset_tag_t, pcitag_t);
int	pci_msix_count(pci_chipset_tag_t, pcitag_t);
#define	pci_dma64_available(pa)	((pa)->pa_dmat64 != NULL)
int	pci_intr_alloc(const struct pci_attach_args *, pci_intr_handle_t **,
	    int *, pci_intr_type_t);
void	pci_intr_release(pci_chipset_tag_t, pci_intr_handle_t *, int);
int	pci_intr_setattr(pci_chipset_tag_t, pci_intr_handle_t *, int,
	    uint64_t);
void	*pci_intr_establish_xname(pci_chipset_tag_t, pci_intr_handle_t, int,
	    int (*)(void *), void *, const char *);
void	pci_intr_disestablish(pci_chipset_tag_t, void *);

/* dev/pci/pciio.h (what pci_usrreq.c's ioctls take) */
struct pciio_bdf_cfgreg {
	u_int		bus;
	u_int		device;
	u_int		function;
	struct { u_int reg; uint32_t val; } cfgreg;
};
struct pciio_cfgreg {
	u_int		reg;
	uint32_t	val;
};
#define	PCI_IOC_CFGREAD		_IOWR('P', 0, struct pciio_cfgreg)
#define	PCI_IOC_CFGWRITE	_IOW('P', 1, struct pciio_cfgreg)
#define	PCI_IOC_BDF_CFGREAD	_IOWR('P', 2, struct pciio_bdf_cfgreg)
#define	PCI_IOC_BDF_CFGWRITE	_IOW('P', 3, struct pciio_bdf_cfgreg)
#define	PCI_IOC_BUSINFO		_IOR('P', 4, struct pciio_cfgreg)
#define	PCI_IOC_DRVNAME		_IOWR('P', 5, struct pciio_cfgreg)
#define	PCI_IOC_DRVNAMEONBUS	_IOWR('P', 6, struct pciio_cfgreg)

#endif /* _HARNESS_KSTUB_H_ */
