/*
 * kstub.c: the stand-in kernel under pci_user.c (see kstub.h), and a
 * fake PCI bus behind it.  It enforces what NetBSD/x86 enforces where
 * the review of issue 24 found crashes:
 *  - bus_dmamap_sync panics on PRE and POST together (x86 does, even
 *    without DIAGNOSTIC) and on a zero length or a range beyond the
 *    map (ports that check, DIAGNOSTIC);
 *  - bus_dmamem_alloc splits a contiguous allocation at `boundary' and
 *    returns EFBIG without freeing the pages when that needs more
 *    segments than asked for, as x86's _bus_dmamem_alloc_range does;
 *    the pages are counted in h_leaked_pages;
 *  - LOCKDEBUG-style lock checks: recursion, release by a non-owner,
 *    lock order reversal between lock classes (a class is a lock's
 *    mutex_init call site), an adaptive lock taken with a spin lock
 *    held or in interrupt context, sleeping (cv_wait, KM_SLEEP,
 *    copyin/out, waits for handlers) with a spin lock held other
 *    than a condvar's interlock;
 *  - bus_space_map is an extent: a range is mapped by one owner only,
 *    and x86's MSI-X code (msipic) maps the MSI-X table when vectors
 *    are allocated;
 *  - kmem_free checks the size it is given, and kmem is counted.
 * A panic prints "panic: ..." and aborts the process: each case runs
 * in its own child process (cases.c).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kstub.h"
#include "harness.h"
#include "include/locators.h"

long physmem = 262144;		/* 1 GiB */
struct cfdriver pci_cd = { "pci" };
static struct lwp lwp0;
struct lwp *curlwp = &lwp0;

int	h_kauth_deny;
long	h_phys_pages;
long	h_leaked_pages;
long	h_sizing_with_decode;
long	h_freed_while_master;
long	h_msix_maps;
long	h_softints_run;
int	h_pmap_fail;
void	(*h_gate_hook)(int);
long	h_slow_attached;

static pthread_mutex_t hglobal = PTHREAD_MUTEX_INITIALIZER;

void
panic(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "panic: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	fflush(stderr);
	abort();
}

/*
 * Locks (LOCKDEBUG).
 */
#define	H_MAXCLASS	64
#define	H_MAXHELD	16

enum hkind { HK_ADAPTIVE, HK_SPIN, HK_RW };

struct hlock {
	pthread_mutex_t	m;
	enum hkind	kind;
	int		cls;
	bool		owned;
	pthread_t	owner;
};

static const void *hclass_site[H_MAXCLASS];
static int hnclass;
static unsigned char horder[H_MAXCLASS][H_MAXCLASS];	/* a before b */

static __thread struct hlock *held[H_MAXHELD];
static __thread int nheld;
static __thread int nspin;
static __thread int in_intr;

static int
hclass(const void *site)
{
	int i;

	pthread_mutex_lock(&hglobal);
	for (i = 0; i < hnclass; i++)
		if (hclass_site[i] == site)
			break;
	if (i == hnclass) {
		if (hnclass == H_MAXCLASS)
			panic("harness: too many lock classes");
		hclass_site[hnclass++] = site;
	}
	pthread_mutex_unlock(&hglobal);
	return i;
}

static struct hlock *
hlock_new(enum hkind kind, const void *site)
{
	struct hlock *h = calloc(1, sizeof(*h));

	pthread_mutex_init(&h->m, NULL);
	h->kind = kind;
	h->cls = hclass(site);
	return h;
}

static void
assert_sleepable(const char *what, const struct hlock *interlock)
{
	int i;

	if (in_intr)
		panic("%s: sleeping in interrupt context", what);
	for (i = 0; i < nheld; i++)
		if (held[i]->kind == HK_SPIN && held[i] != interlock)
			panic("%s: sleeping with a spin mutex held "
			    "(class %d)", what, held[i]->cls);
}

static void
hlock_acquire(struct hlock *h, const char *what)
{
	int i;

	if (h->owned && pthread_equal(h->owner, pthread_self()))
		panic("%s: locking against myself (class %d)", what, h->cls);
	if (h->kind != HK_SPIN) {
		if (in_intr)
			panic("%s: adaptive lock in interrupt context", what);
		assert_sleepable(what, NULL);
	}
	pthread_mutex_lock(&hglobal);
	for (i = 0; i < nheld; i++) {
		int a = held[i]->cls, b = h->cls;

		if (a == b)
			continue;
		if (horder[b][a]) {
			pthread_mutex_unlock(&hglobal);
			panic("%s: lock order reversal: class %d taken "
			    "holding class %d, the other order seen before",
			    what, b, a);
		}
		horder[a][b] = 1;
	}
	pthread_mutex_unlock(&hglobal);
	pthread_mutex_lock(&h->m);
	h->owned = true;
	h->owner = pthread_self();
	if (nheld == H_MAXHELD)
		panic("%s: too many locks held", what);
	held[nheld++] = h;
	if (h->kind == HK_SPIN)
		nspin++;
}

static void
hlock_release(struct hlock *h, const char *what)
{
	int i;

	if (!h->owned || !pthread_equal(h->owner, pthread_self()))
		panic("%s: not owner (class %d)", what, h->cls);
	for (i = nheld - 1; i >= 0; i--)
		if (held[i] == h)
			break;
	KASSERT(i >= 0);
	for (; i < nheld - 1; i++)
		held[i] = held[i + 1];
	nheld--;
	if (h->kind == HK_SPIN)
		nspin--;
	h->owned = false;
	pthread_mutex_unlock(&h->m);
}

#define	HL(x)	((struct hlock *)(x))

void
mutex_init(kmutex_t *mtx, kmutex_type_t type, int ipl)
{

	mtx->mtx_impl = hlock_new(ipl > IPL_SOFTNET || type == MUTEX_SPIN ?
	    HK_SPIN : HK_ADAPTIVE, __builtin_return_address(0));
}

void
mutex_destroy(kmutex_t *mtx)
{
	struct hlock *h = HL(mtx->mtx_impl);

	if (h == NULL || h->owned)
		panic("mutex_destroy: %s", h == NULL ? "uninitialized" :
		    "held");
	pthread_mutex_destroy(&h->m);
	free(h);
	mtx->mtx_impl = NULL;
}

void
mutex_enter(kmutex_t *mtx)
{

	if (mtx->mtx_impl == NULL)
		panic("mutex_enter: uninitialized");
	hlock_acquire(HL(mtx->mtx_impl), "mutex_enter");
}

void
mutex_exit(kmutex_t *mtx)
{

	hlock_release(HL(mtx->mtx_impl), "mutex_exit");
}

void
mutex_spin_enter(kmutex_t *mtx)
{

	if (HL(mtx->mtx_impl)->kind != HK_SPIN)
		panic("mutex_spin_enter: adaptive mutex");
	hlock_acquire(HL(mtx->mtx_impl), "mutex_spin_enter");
}

void
mutex_spin_exit(kmutex_t *mtx)
{

	if (HL(mtx->mtx_impl)->kind != HK_SPIN)
		panic("mutex_spin_exit: adaptive mutex");
	hlock_release(HL(mtx->mtx_impl), "mutex_spin_exit");
}

int
mutex_owned(const kmutex_t *mtx)
{
	struct hlock *h = HL(mtx->mtx_impl);

	return h->owned && pthread_equal(h->owner, pthread_self());
}

void
rw_init(krwlock_t *rw)
{

	rw->rw_impl = hlock_new(HK_RW, __builtin_return_address(0));
}

void
rw_destroy(krwlock_t *rw)
{
	struct hlock *h = HL(rw->rw_impl);

	if (h->owned)
		panic("rw_destroy: held");
	pthread_mutex_destroy(&h->m);
	free(h);
	rw->rw_impl = NULL;
}

void
rw_enter(krwlock_t *rw, krw_t op)
{

	hlock_acquire(HL(rw->rw_impl), "rw_enter");
}

void
rw_exit(krwlock_t *rw)
{

	hlock_release(HL(rw->rw_impl), "rw_exit");
}

static pthread_mutex_t kernel_lock;
static pthread_once_t kernel_lock_once = PTHREAD_ONCE_INIT;
static __thread int kernel_lock_count;

static void
kernel_lock_init(void)
{
	pthread_mutexattr_t a;

	pthread_mutexattr_init(&a);
	pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&kernel_lock, &a);
}

void
harness_kernel_lock(void)
{

	pthread_once(&kernel_lock_once, kernel_lock_init);
	if (nspin)
		panic("KERNEL_LOCK: spin mutex held");
	pthread_mutex_lock(&kernel_lock);
	kernel_lock_count++;
}

void
harness_kernel_unlock(void)
{

	if (kernel_lock_count == 0)
		panic("KERNEL_UNLOCK: not held");
	kernel_lock_count--;
	pthread_mutex_unlock(&kernel_lock);
}

bool
harness_kernel_locked(void)
{

	return kernel_lock_count > 0;
}

struct hcv {
	pthread_cond_t	c;
	const char	*wmesg;
};

void
cv_init(kcondvar_t *cv, const char *wmesg)
{
	struct hcv *c = calloc(1, sizeof(*c));

	pthread_cond_init(&c->c, NULL);
	c->wmesg = wmesg;
	cv->cv_impl = c;
}

void
cv_destroy(kcondvar_t *cv)
{
	struct hcv *c = cv->cv_impl;

	pthread_cond_destroy(&c->c);
	free(c);
	cv->cv_impl = NULL;
}

static void
hcv_wait(kcondvar_t *cv, kmutex_t *mtx, const char *what)
{
	struct hlock *h = HL(mtx->mtx_impl);
	struct hcv *c = cv->cv_impl;
	int i, biglocks;

	if (!mutex_owned(mtx))
		panic("%s: interlock not held", what);
	assert_sleepable(what, h);
	/* Sleep: the interlock is let go; the others stay held. */
	for (i = nheld - 1; held[i] != h; i--)
		;
	for (; i < nheld - 1; i++)
		held[i] = held[i + 1];
	nheld--;
	if (h->kind == HK_SPIN)
		nspin--;
	h->owned = false;
	/* As mi_switch: the kernel lock is let go across the sleep. */
	biglocks = kernel_lock_count;
	for (i = 0; i < biglocks; i++)
		harness_kernel_unlock();
	pthread_cond_wait(&c->c, &h->m);
	if (biglocks != 0) {
		pthread_mutex_unlock(&h->m);
		for (i = 0; i < biglocks; i++)
			harness_kernel_lock();
		pthread_mutex_lock(&h->m);
	}
	h->owned = true;
	h->owner = pthread_self();
	held[nheld++] = h;
	if (h->kind == HK_SPIN)
		nspin++;
}

void
cv_wait(kcondvar_t *cv, kmutex_t *mtx)
{

	hcv_wait(cv, mtx, "cv_wait");
}

int
cv_wait_sig(kcondvar_t *cv, kmutex_t *mtx)
{

	hcv_wait(cv, mtx, "cv_wait_sig");
	return 0;
}

void
cv_broadcast(kcondvar_t *cv)
{

	pthread_cond_broadcast(&((struct hcv *)cv->cv_impl)->c);
}

void
cv_signal(kcondvar_t *cv)
{

	pthread_cond_signal(&((struct hcv *)cv->cv_impl)->c);
}

int
_run_once(once_t *o, int (*fn)(void))
{
	static pthread_mutex_t once_lock = PTHREAD_MUTEX_INITIALIZER;
	int error = 0;

	pthread_mutex_lock(&once_lock);
	if (!o->o_done) {
		error = fn();
		o->o_done = 1;
	}
	pthread_mutex_unlock(&once_lock);
	return error;
}

/*
 * kmem(9): sizes checked at free, outstanding bytes counted.
 */
static long kmem_bytes, kmem_allocs;

void *
kmem_alloc(size_t size, km_flag_t flags)
{
	size_t *p;

	if (size == 0)
		panic("kmem_alloc: zero size");
	if (flags & KM_SLEEP)
		assert_sleepable("kmem_alloc(KM_SLEEP)", NULL);
	p = malloc(size + 16);
	if (p == NULL)
		panic("kmem_alloc: host out of memory");
	p[0] = size;
	memset(p + 2, 0xa5, size);
	__atomic_add_fetch(&kmem_bytes, (long)size, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&kmem_allocs, 1, __ATOMIC_SEQ_CST);
	return p + 2;
}

void *
kmem_zalloc(size_t size, km_flag_t flags)
{
	void *p = kmem_alloc(size, flags);

	memset(p, 0, size);
	return p;
}

void
kmem_free(void *ptr, size_t size)
{
	size_t *p = (size_t *)ptr - 2;

	if (p[0] != size)
		panic("kmem_free: size %zu, allocated %zu", size, p[0]);
	__atomic_sub_fetch(&kmem_bytes, (long)size, __ATOMIC_SEQ_CST);
	__atomic_sub_fetch(&kmem_allocs, 1, __ATOMIC_SEQ_CST);
	free(p);
}

/*
 * kauth, copyin/out, uio, files.
 */
static struct kauth_cred { int dummy; } cred0;

kauth_cred_t
kauth_cred_get(void)
{

	return &cred0;
}

uid_t
kauth_cred_geteuid(kauth_cred_t c)
{

	return 0;
}

gid_t
kauth_cred_getegid(kauth_cred_t c)
{

	return 0;
}

int
kauth_authorize_machdep(kauth_cred_t c, int action, void *a, void *b,
    void *d, void *e)
{

	if (action != KAUTH_MACHDEP_UNMANAGEDMEM)
		panic("kauth: unexpected action %d", action);
	return h_kauth_deny ? EPERM : 0;
}

/* User addresses below 64 KiB fault. */
#define	H_BADUADDR(p)	((uintptr_t)(p) < 0x10000)

/* copyin and copyout: the user's side is `uaddr', whichever way it goes. */
static int
hcopy(const char *what, const void *uaddr, void *dst, const void *src,
    size_t len)
{

	assert_sleepable(what, NULL);
	if (H_BADUADDR(uaddr))
		return EFAULT;
	memcpy(dst, src, len);
	return 0;
}

int
copyin(const void *uaddr, void *kaddr, size_t len)
{

	return hcopy("copyin", uaddr, kaddr, uaddr, len);
}

int
copyout(const void *kaddr, void *uaddr, size_t len)
{

	return hcopy("copyout", uaddr, uaddr, kaddr, len);
}

int
uiomove(void *buf, size_t n, struct uio *uio)
{

	assert_sleepable("uiomove", NULL);
	if ((ssize_t)n > uio->uio_resid)
		n = (size_t)uio->uio_resid;
	if (uio->uio_fault)
		return EFAULT;
	if (n == 0)
		return 0;
	if (uio->uio_rw == UIO_READ)
		memcpy(uio->uio_buf, buf, n);
	else
		memcpy(buf, uio->uio_buf, n);
	uio->uio_buf += n;
	uio->uio_resid -= (ssize_t)n;
	uio->uio_offset += (off_t)n;
	return 0;
}

int
fbadop_write(struct file *fp, off_t *off, struct uio *uio, kauth_cred_t c,
    int fl)
{

	return EOPNOTSUPP;
}

int
fnullop_fcntl(struct file *fp, u_int cmd, void *data)
{

	return 0;
}

void
fnullop_restart(struct file *fp)
{
}

static __thread struct file *h_cloned;
static long h_files;

int
fd_allocfile(struct file **fpp, int *fdp)
{

	*fpp = calloc(1, sizeof(**fpp));
	(*fpp)->f_cred = &cred0;
	*fdp = 3;
	__atomic_add_fetch(&h_files, 1, __ATOMIC_SEQ_CST);
	return 0;
}

int
fd_clone(struct file *fp, int fd, int flag, const struct fileops *fops,
    void *data)
{

	fp->f_flag = flag & (FREAD | FWRITE | FNONBLOCK);
	fp->f_ops = fops;
	fp->f_data = data;
	h_cloned = fp;
	return 0;	/* NetBSD says EMOVEFD; the harness takes fp */
}

/*
 * select/kqueue.
 */
void
selinit(struct selinfo *sip)
{

	memset(sip, 0, sizeof(*sip));
	sip->sel_inited = 1;
}

void
seldestroy(struct selinfo *sip)
{

	if (sip->sel_klist != NULL)
		panic("seldestroy: knotes still attached");
	sip->sel_inited = 0;
}

void
selrecord(struct lwp *l, struct selinfo *sip)
{

	sip->sel_recorded++;
}

void
selnotify(struct selinfo *sip, int events, long knhint)
{
	struct knote *kn;

	sip->sel_notified++;
	for (kn = sip->sel_klist; kn != NULL; kn = kn->kn_selnext)
		if (kn->kn_fop->f_event(kn, knhint))
			kn->kn_fired = 1;
}

void
selrecord_knote(struct selinfo *sip, struct knote *kn)
{

	kn->kn_selnext = sip->sel_klist;
	sip->sel_klist = kn;
}

void
selremove_knote(struct selinfo *sip, struct knote *kn)
{
	struct knote **p;

	for (p = &sip->sel_klist; *p != NULL; p = &(*p)->kn_selnext)
		if (*p == kn) {
			*p = kn->kn_selnext;
			return;
		}
	panic("selremove_knote: not on the list");
}

void
knote_set_eof(struct knote *kn, uint32_t flags)
{

	kn->kn_flags |= EV_EOF;
}

/*
 * Soft interrupts: run when the hard interrupt returns (h_nic_raise).
 */
struct hsoftint {
	void		(*fn)(void *);
	void		*arg;
	int		pending;
	struct hsoftint	*next;
};
static struct hsoftint *hsoftint_list;
static long h_softints;

void *
softint_establish(u_int flags, void (*fn)(void *), void *arg)
{
	struct hsoftint *s = calloc(1, sizeof(*s));

	s->fn = fn;
	s->arg = arg;
	pthread_mutex_lock(&hglobal);
	s->next = hsoftint_list;
	hsoftint_list = s;
	h_softints++;
	pthread_mutex_unlock(&hglobal);
	return s;
}

void
softint_disestablish(void *cookie)
{

	struct hsoftint **p;

	assert_sleepable("softint_disestablish", NULL);
	pthread_mutex_lock(&hglobal);
	for (p = &hsoftint_list; *p != cookie; p = &(*p)->next)
		if (*p == NULL)
			panic("softint_disestablish: not established");
	*p = ((struct hsoftint *)cookie)->next;
	h_softints--;
	pthread_mutex_unlock(&hglobal);
	free(cookie);
}

void
softint_schedule(void *cookie)
{

	((struct hsoftint *)cookie)->pending = 1;
}

/*
 * sysctl: the nodes pci_user.c creates, reachable by name.
 */
struct hsysctl {
	char		name[32];
	int		(*fn)(SYSCTLFN_ARGS);
	void		*data;
	int		flags;
};
static struct hsysctl hsysctls[8];
static int hnsysctl;

int
sysctl_createv(struct sysctllog **log, int cflags,
    const struct sysctlnode **rnode, const struct sysctlnode **cnode,
    int flags, int type, const char *name, const char *descr,
    int (*fn)(SYSCTLFN_ARGS), u_quad_t qv, void *newp, size_t newlen, ...)
{
	static struct sysctlnode parent;

	if (cnode != NULL)
		*cnode = &parent;
	if (type == CTLTYPE_NODE || hnsysctl == 8)
		return 0;
	snprintf(hsysctls[hnsysctl].name, sizeof(hsysctls[0].name), "%s",
	    name);
	hsysctls[hnsysctl].fn = fn;
	hsysctls[hnsysctl].data = newp;
	hsysctls[hnsysctl].flags = flags;
	hnsysctl++;
	return 0;
}

int
sysctl_lookup(SYSCTLFN_ARGS)
{

	if (oldp != NULL)
		memcpy(oldp, rnode->sysctl_data, sizeof(uint64_t));
	if (newp != NULL)
		memcpy(rnode->sysctl_data, newp, sizeof(uint64_t));
	return 0;
}

int
h_sysctl(const char *name, uint64_t *oldv, const uint64_t *newv)
{
	struct sysctlnode node;
	size_t oldlen = sizeof(uint64_t);
	int i;

	for (i = 0; i < hnsysctl; i++) {
		if (strcmp(hsysctls[i].name, name) != 0)
			continue;
		if (newv != NULL && (hsysctls[i].flags & CTLFLAG_READONLY))
			return EPERM;
		node.sysctl_data = hsysctls[i].data;
		if (hsysctls[i].fn == NULL)
			return sysctl_lookup(NULL, 0, oldv, &oldlen, newv,
			    sizeof(uint64_t), NULL, curlwp, &node);
		return hsysctls[i].fn(NULL, 0, oldv, &oldlen, newv,
		    sizeof(uint64_t), NULL, curlwp, &node);
	}
	return ENOENT;
}

/*
 * The fake PCI bus: bus 0, a NIC with no driver at 3.0, a device owned
 * by a kernel driver at 4.0, and at 5.0 a device that the "slow" kernel
 * driver attaches to when the bus is rescanned (h_rescan).
 */
struct hfunc {
	bool		present;
	uint8_t		cfg[PCI_EXTCONF_SIZE] __attribute__((__aligned__(8)));
	uint64_t	barsize[6];	/* 0: not implemented */
	bool		sticky_master;
};
static uint8_t hnic_mem[6][H_BAR0_SIZE] __attribute__((__aligned__(PAGE_SIZE)));	/* the NIC's BAR contents */
static struct hfunc hfuncs[32];
static struct pci_softc hsc;
static bool hsc_attached;

/*
 * autoconf(9): pci0 and its children.  The victim's driver is attached
 * for good (not on halldevs); config_found() (in pci_probe_device) and
 * config_detach() manage the others on halldevs, under the kernel lock.
 */
struct device {
	device_t	dv_parent;
	const struct cfattach *dv_ca;
	int		dv_locators[PCICF_NLOCS];
	void		*dv_private;
};
static struct device hpci_dev, hvictim_dev;
static device_t halldevs[8];

struct harness_pci_chipset { int dummy; } hpc;
struct harness_bus_space { bool io; } hmemt = { false }, hiot = { true };

/*
 * A DMA tag per function (its slot in dev), so that DMA memory freed
 * while the function it was allocated for masters is counted (memory of
 * another function is not).
 */
struct harness_dma_tag {
	bus_addr_t	maxaddr;
	bool		sub;
	int		dev;
};
static struct harness_dma_tag hdmat[32], hdmat64[32];
static long h_subtags;

#define	CFG32(f, r)	(*(uint32_t *)&hfuncs[f].cfg[(r)])

static void
cfg_put(int f, int reg, uint32_t v)
{

	CFG32(f, reg) = v;
}

static void
hfunc_init_nic(void)
{
	int f = H_DEV_NIC;

	memset(&hfuncs[f], 0, sizeof(hfuncs[f]));
	hfuncs[f].present = true;
	cfg_put(f, PCI_ID_REG, 0x10d38086);
	cfg_put(f, PCI_COMMAND_STATUS_REG, 0x00100007);	/* caps, decode */
	cfg_put(f, PCI_CLASS_REG, 0x02000000);
	cfg_put(f, PCI_BHLC_REG, 0x00000010);
	cfg_put(f, 0x10, (uint32_t)H_BAR0_BASE | 0x4);	/* mem64 */
	cfg_put(f, 0x14, (uint32_t)(H_BAR0_BASE >> 32));
	cfg_put(f, 0x18, (uint32_t)H_BAR2_BASE | 0x1);	/* io */
	cfg_put(f, 0x1c, (uint32_t)H_BAR3_BASE);	/* mem32 */
	hfuncs[f].barsize[0] = H_BAR0_SIZE;
	hfuncs[f].barsize[2] = H_BAR2_SIZE;
	hfuncs[f].barsize[3] = H_BAR3_SIZE;
	cfg_put(f, PCI_SUBSYS_ID_REG, 0x00008086);
	cfg_put(f, PCI_CAPLISTPTR_REG, 0x40);
	cfg_put(f, PCI_INTERRUPT_REG, 0x0000010b);	/* INTA, line 11 */
	/* Capabilities: PM 0x40, MSI 0x50, PCIe 0x70, MSI-X 0xa0, vendor 0xb0 */
	cfg_put(f, 0x40, 0x00035001);
	cfg_put(f, 0x50, 0x00847005 | (2 << 17));	/* 64-bit, 4 vectors */
	cfg_put(f, 0x70, 0x0002a010);
	cfg_put(f, 0xa0, ((H_MSIX_NVEC - 1) << 16) | 0xb011);
	cfg_put(f, 0xa4, (uint32_t)H_MSIX_TABLE | 3);	/* BIR 3 */
	cfg_put(f, 0xa8, (uint32_t)H_MSIX_PBA | 3);
	cfg_put(f, 0xb0, 0x00100009);	/* vendor-specific, 16 bytes */
	/* Extended: AER at 0x100. */
	cfg_put(f, 0x100, 0x00010001);
}

#define	H_SLOW_ID	0x5a5a1af4U

static void
hfunc_init_slow(void)
{
	int f = H_DEV_SLOW;

	memset(&hfuncs[f], 0, sizeof(hfuncs[f]));
	hfuncs[f].present = true;
	cfg_put(f, PCI_ID_REG, H_SLOW_ID);
	cfg_put(f, PCI_COMMAND_STATUS_REG, 0x00000002);
	cfg_put(f, PCI_CLASS_REG, 0x02800000);
	cfg_put(f, 0x10, 0xfe100000);
	hfuncs[f].barsize[0] = 0x1000;
}

static void
hfunc_init_victim(void)
{
	int f = H_DEV_VICTIM;

	memset(&hfuncs[f], 0, sizeof(hfuncs[f]));
	hfuncs[f].present = true;
	cfg_put(f, PCI_ID_REG, 0x29228086);
	cfg_put(f, PCI_COMMAND_STATUS_REG, 0x00000007);
	cfg_put(f, PCI_CLASS_REG, 0x01060100);
	cfg_put(f, 0x10, 0xfe000000);
	hfuncs[f].barsize[0] = 0x1000;
}

static uint32_t
hcfg_read(int dev, int func, int reg)
{

	if (dev < 0 || dev >= 32 || func != 0 || !hfuncs[dev].present)
		return 0xffffffffU;
	if (reg < 0 || reg >= PCI_EXTCONF_SIZE || (reg & 3))
		panic("pci_conf_read: bad register %#x", reg);
	return CFG32(dev, reg);
}

static void
hcfg_write(int dev, int func, int reg, uint32_t v)
{
	struct hfunc *hf;
	uint32_t old, csr;
	int bar;

	if (dev < 0 || dev >= 32 || func != 0 || !hfuncs[dev].present)
		return;
	if (reg < 0 || reg >= PCI_EXTCONF_SIZE || (reg & 3))
		panic("pci_conf_write: bad register %#x", reg);
	hf = &hfuncs[dev];
	old = CFG32(dev, reg);
	csr = CFG32(dev, PCI_COMMAND_STATUS_REG);
	switch (reg) {
	case PCI_ID_REG:
	case PCI_CLASS_REG:
		return;
	case PCI_COMMAND_STATUS_REG:
		v = (v & 0x0000ffffU) | (old & 0xffff0000U & ~(v & 0xf9000000U));
		if (hf->sticky_master)
			v |= PCI_COMMAND_MASTER_ENABLE;
		break;
	case 0x10: case 0x14: case 0x18: case 0x1c: case 0x20: case 0x24:
		bar = (reg - 0x10) / 4;
		if (v == 0xffffffffU && (csr & (PCI_COMMAND_IO_ENABLE |
		    PCI_COMMAND_MEM_ENABLE)))
			h_sizing_with_decode++;
		if (bar > 0 && hf->barsize[bar] == 0 &&
		    hf->barsize[bar - 1] != 0 && (CFG32(dev, reg - 4) & 5) == 4) {
			/* Upper half of a 64-bit BAR: all writable. */
			break;
		}
		if (hf->barsize[bar] == 0)
			v = 0;
		else
			v = (v & ~(uint32_t)(hf->barsize[bar] - 1) &
			    ((old & 1) ? ~3U : ~0xfU)) | (old & ((old & 1) ? 3 : 0xf));
		break;
	default:
		if (reg < 0x40)
			return;
		break;
	}
	CFG32(dev, reg) = v;
}

pcireg_t
pci_conf_read(pci_chipset_tag_t pc, pcitag_t tag, int reg)
{

	return hcfg_read((int)(tag >> 8) & 0x1f, (int)tag & 7, reg);
}

void
pci_conf_write(pci_chipset_tag_t pc, pcitag_t tag, int reg, pcireg_t v)
{

	hcfg_write((int)(tag >> 8) & 0x1f, (int)tag & 7, reg, v);
}

pcitag_t
pci_make_tag(pci_chipset_tag_t pc, int bus, int dev, int func)
{

	if (bus != 0 || dev < 0 || dev >= 32 || func < 0 || func > 7)
		panic("pci_make_tag: %d/%d/%d", bus, dev, func);
	return ((pcitag_t)bus << 16) | ((pcitag_t)dev << 8) | (pcitag_t)func;
}

/*
 * The stand-in kernel's slow driver of function 5: its attach and its
 * detach sleep, which lets the kernel lock go (h_gate).
 */
static int
hslow_match(device_t parent, cfdata_t cf, void *aux)
{
	const struct pci_attach_args *pa = aux;

	return pa->pa_id == H_SLOW_ID;
}

/*
 * Where a driver's attach or detach would sleep: the kernel lock is let
 * go (as mi_switch does) and h_gate_hook runs, which a case makes block
 * until it lets it go, so that the interleaving is its own.
 */
static void
h_gate(int what)
{
	int i, biglocks = kernel_lock_count;

	if (h_gate_hook == NULL)
		return;
	if (nspin)
		panic("h_gate: sleeping with a spin mutex held");
	for (i = 0; i < biglocks; i++)
		harness_kernel_unlock();
	h_gate_hook(what);
	for (i = 0; i < biglocks; i++)
		harness_kernel_lock();
}

static void
hslow_attach(device_t parent, device_t self, void *aux)
{

	h_gate(H_GATE_ATTACH);
	h_slow_attached++;
}

static int
hslow_detach(device_t self, int flags)
{

	h_gate(H_GATE_DETACH);
	h_slow_attached--;
	return 0;
}

static struct cfattach hslow_ca = {
	"hslow", 0, hslow_match, hslow_attach, hslow_detach, NULL
};
extern struct cfattach pciuser_ca;

void *
device_private(device_t dv)
{

	return dv->dv_private;
}

device_t
device_parent(device_t dv)
{

	return dv->dv_parent;
}

int
device_locator(device_t dv, u_int locnum)
{

	if (locnum >= PCICF_NLOCS)
		panic("device_locator: %u", locnum);
	return dv->dv_locators[locnum];
}

device_t
deviter_first(deviter_t *di, int flags)
{

	if (!harness_kernel_locked())
		panic("deviter_first: kernel lock not held");
	di->di_next = 0;
	return deviter_next(di);
}

device_t
deviter_next(deviter_t *di)
{

	while (di->di_next < (int)__arraycount(halldevs)) {
		if (halldevs[di->di_next++] != NULL)
			return halldevs[di->di_next - 1];
	}
	return NULL;
}

void
deviter_release(deviter_t *di)
{
}

/*
 * config_found(): the best match among the stand-in kernel's drivers
 * (pciuser's and the slow driver), linked on halldevs before its attach
 * runs, as config_attach_loc() does.
 */
static device_t
hconfig_found(struct pci_softc *sc, struct pci_attach_args *pa)
{
	struct cfattach *drivers[] = { &pciuser_ca, &hslow_ca }, *best = NULL;
	device_t dv;
	size_t i;
	int pri, bestpri = 0;

	if (!harness_kernel_locked())
		panic("config_found: kernel lock not held");
	for (i = 0; i < __arraycount(drivers); i++) {
		pri = drivers[i]->ca_match(sc->sc_dev, NULL, pa);
		if (pri > bestpri) {
			bestpri = pri;
			best = drivers[i];
		}
	}
	if (best == NULL)
		return NULL;
	dv = calloc(1, sizeof(*dv));
	dv->dv_parent = sc->sc_dev;
	dv->dv_ca = best;
	dv->dv_locators[PCICF_DEV] = (int)pa->pa_device;
	dv->dv_locators[PCICF_FUNCTION] = (int)pa->pa_function;
	dv->dv_private = best->ca_devsize ? calloc(1, best->ca_devsize) : NULL;
	for (i = 0; i < __arraycount(halldevs) && halldevs[i] != NULL; i++)
		;
	if (i == __arraycount(halldevs))
		panic("config_found: too many devices");
	halldevs[i] = dv;
	best->ca_attach(sc->sc_dev, dv, pa);
	return dv;
}

/* As pci(4)'s: the header as captured, command register included. */
void
pci_conf_capture(pci_chipset_tag_t pc, pcitag_t tag,
    struct pci_conf_state *pcs)
{
	int i;

	for (i = 0; i < 16; i++)
		pcs->reg[i] = pci_conf_read(pc, tag, i * 4);
}

void
pci_conf_restore(pci_chipset_tag_t pc, pcitag_t tag,
    struct pci_conf_state *pcs)
{
	int i;

	for (i = 15; i >= 0; i--)
		pci_conf_write(pc, tag, i * 4, pcs->reg[i]);
}

/*
 * As config_detach(), and pci(4)'s pcidevdetached(): the function's
 * header is written back as pci_probe_device() captured it, c_dev
 * cleared.
 */
int
config_detach(device_t dv, int flags)
{
	struct pci_child *c;
	size_t i;
	int error;

	if (!harness_kernel_locked())
		panic("config_detach: kernel lock not held");
	for (i = 0; i < __arraycount(halldevs) && halldevs[i] != dv; i++)
		;
	if (i == __arraycount(halldevs))
		panic("config_detach: %p is not attached", dv);
	error = dv->dv_ca->ca_detach(dv, flags);
	if (error)
		return error;
	halldevs[i] = NULL;
	c = &hsc.PCI_SC_DEVICESC(dv->dv_locators[PCICF_DEV],
	    dv->dv_locators[PCICF_FUNCTION]);
	if (c->c_dev != dv)
		panic("pcidevdetached: c_dev is not the child");
	pci_conf_restore(&hpc, pci_make_tag(&hpc, 0,
	    dv->dv_locators[PCICF_DEV], dv->dv_locators[PCICF_FUNCTION]),
	    &c->c_conf);
	c->c_dev = NULL;
	free(dv->dv_private);
	free(dv);
	return 0;
}

/* config_detach_children() of pci0. */
static int
hdetach_children(int flags)
{
	size_t i;
	int error;

	for (i = 0; i < __arraycount(halldevs); i++) {
		if (halldevs[i] == NULL)
			continue;
		if ((error = config_detach(halldevs[i], flags)) != 0)
			return error;
		i = (size_t)-1;		/* the list changed: again */
	}
	return 0;
}

int
h_rescan(int dev)
{
	int attached;

	harness_kernel_lock();
	attached = pci_probe_device(&hsc, pci_make_tag(&hpc, 0, dev, 0),
	    NULL, NULL);
	harness_kernel_unlock();
	return attached;
}

const char *
h_driver_of(int dev)
{
	device_t dv = hsc.PCI_SC_DEVICESC(dev, 0).c_dev;

	if (dv == NULL)
		return NULL;
	return dv == &hvictim_dev ? "victim" : dv->dv_ca->ca_name;
}

int
h_driver_detach(int dev, int flags)
{
	device_t dv;
	int error;

	harness_kernel_lock();
	dv = hsc.PCI_SC_DEVICESC(dev, 0).c_dev;
	error = dv == NULL ? ENXIO : config_detach(dv, flags);
	harness_kernel_unlock();
	return error;
}

int
pci_probe_device(struct pci_softc *sc, pcitag_t tag,
    int (*match)(const struct pci_attach_args *), struct pci_attach_args *pa)
{
	int dev = (int)(tag >> 8) & 0x1f;
	struct pci_attach_args apa;
	bus_addr_t base;
	bus_size_t size;
	pcireg_t type;
	int bar, width;

	if (!hfuncs[dev].present)
		return 0;
	/* a driver already attached? */
	if (match == NULL && sc->PCI_SC_DEVICESC(dev, 0).c_dev != NULL)
		return 0;
	/*
	 * As NetBSD's "Collect memory range info": every BAR is probed
	 * and every memory BAR sized, writing all-ones to it with
	 * whatever decoding the function has on (issue 15's #3).
	 */
	for (bar = PCI_MAPREG_START; bar < PCI_MAPREG_END; bar += width) {
		width = 4;
		if (pci_mapreg_probe(&hpc, tag, bar, &type) == 0 ||
		    PCI_MAPREG_TYPE(type) != PCI_MAPREG_TYPE_MEM)
			continue;
		if (PCI_MAPREG_MEM_TYPE(type) == PCI_MAPREG_MEM_TYPE_64BIT)
			width = 8;
		(void)pci_mapreg_info(&hpc, tag, bar, type, &base, &size,
		    NULL);
	}
	if (pa == NULL)
		pa = &apa;
	memset(pa, 0, sizeof(*pa));
	pa->pa_iot = &hiot;
	pa->pa_memt = &hmemt;
	pa->pa_dmat = &hdmat[dev];
	pa->pa_dmat64 = &hdmat64[dev];
	pa->pa_pc = &hpc;
	pa->pa_flags = PCI_FLAGS_IO_OKAY | PCI_FLAGS_MEM_OKAY;
	pa->pa_bus = 0;
	pa->pa_device = (u_int)dev;
	pa->pa_function = 0;
	pa->pa_tag = tag;
	pa->pa_id = CFG32(dev, PCI_ID_REG);
	pa->pa_class = CFG32(dev, PCI_CLASS_REG);
	pa->pa_intrpin = (CFG32(dev, PCI_INTERRUPT_REG) >> 8) & 0xff;
	if (match != NULL)
		return match(pa);
	pci_conf_capture(&hpc, tag, &sc->PCI_SC_DEVICESC(dev, 0).c_conf);
	sc->PCI_SC_DEVICESC(dev, 0).c_dev = hconfig_found(sc, pa);
	return sc->PCI_SC_DEVICESC(dev, 0).c_dev != NULL;
}

int
pci_mapreg_probe(pci_chipset_tag_t pc, pcitag_t tag, int reg,
    pcireg_t *typep)
{
	pcireg_t v, m;

	v = pci_conf_read(pc, tag, reg);
	pci_conf_write(pc, tag, reg, 0xffffffffU);
	m = pci_conf_read(pc, tag, reg);
	pci_conf_write(pc, tag, reg, v);
	if (m == 0)
		return 0;
	*typep = v & ((v & 1) ? 1 : 0xf);
	return 1;
}

int
pci_mapreg_info(pci_chipset_tag_t pc, pcitag_t tag, int reg, pcireg_t type,
    bus_addr_t *basep, bus_size_t *sizep, int *flagsp)
{
	pcireg_t v, m, vh = 0, mh = 0xffffffffU;
	uint64_t base, mask;

	v = pci_conf_read(pc, tag, reg);
	pci_conf_write(pc, tag, reg, 0xffffffffU);
	m = pci_conf_read(pc, tag, reg);
	pci_conf_write(pc, tag, reg, v);
	if (PCI_MAPREG_TYPE(type) == PCI_MAPREG_TYPE_IO) {
		base = v & ~3U;
		mask = (m & ~3U) | 0xffff0000U;
		*basep = base;
		*sizep = (~mask + 1) & 0xffffffffU;
		if (flagsp)
			*flagsp = 0;
		return 0;
	}
	if (PCI_MAPREG_MEM_TYPE(type) == PCI_MAPREG_MEM_TYPE_64BIT) {
		vh = pci_conf_read(pc, tag, reg + 4);
		pci_conf_write(pc, tag, reg + 4, 0xffffffffU);
		mh = pci_conf_read(pc, tag, reg + 4);
		pci_conf_write(pc, tag, reg + 4, vh);
	}
	base = ((uint64_t)vh << 32) | (v & ~0xfU);
	mask = ((uint64_t)mh << 32) | (m & ~0xfU);
	*basep = base;
	*sizep = ~mask + 1;
	if (flagsp)
		*flagsp = PCI_MAPREG_MEM_PREFETCHABLE(v) ?
		    BUS_SPACE_MAP_PREFETCHABLE : 0;
	return 0;
}

int
pci_get_capability(pci_chipset_tag_t pc, pcitag_t tag, int cap, int *offp,
    pcireg_t *valp)
{
	pcireg_t v;
	int off, n;

	if ((pci_conf_read(pc, tag, PCI_COMMAND_STATUS_REG) &
	    PCI_STATUS_CAPLIST_SUPPORT) == 0)
		return 0;
	/*
	 * As NetBSD's: a pointer that is not dword aligned or points
	 * into the header ends the walk ("Skipping broken PCI header"),
	 * so callers get only aligned offsets >= 0x40.  NetBSD's walk has
	 * no bound (a cyclic list hangs it); 48 here, so that an input
	 * that makes one is not a fuzzer timeout.
	 */
	off = PCI_CAPLIST_PTR(pci_conf_read(pc, tag, PCI_CAPLISTPTR_REG));
	for (n = 0; off != 0 && n < 48; n++) {
		if ((off & 3) || off < 0x40)
			break;
		v = pci_conf_read(pc, tag, off);
		if (PCI_CAPLIST_CAP(v) == (pcireg_t)cap) {
			if (offp)
				*offp = off;
			if (valp)
				*valp = v;
			return 1;
		}
		off = PCI_CAPLIST_NEXT(v);
	}
	return 0;
}

int
pci_msi_count(pci_chipset_tag_t pc, pcitag_t tag)
{
	pcireg_t v;

	if (!pci_get_capability(pc, tag, PCI_CAP_MSI, NULL, &v))
		return 0;
	return 1 << ((v >> 17) & 7);
}

int
pci_msix_count(pci_chipset_tag_t pc, pcitag_t tag)
{
	pcireg_t v;

	if (!pci_get_capability(pc, tag, PCI_CAP_MSIX, NULL, &v))
		return 0;
	return (int)PCI_MSIX_CTL_TBLSIZE(v);
}

/*
 * bus_space: one extent per space, a range reserved by one owner, as
 * x86's: bus_space_map() reserves and maps into kernel VA,
 * bus_space_reserve() only reserves, bus_space_reservation_map() maps
 * a reservation.  Only a mapped range has a handle that reads and
 * writes.
 */
struct hmap {
	bool		used;		/* reserved */
	bool		mapped;		/* and mapped: the handle works */
	struct harness_bus_space *t;
	bus_addr_t	base;
	bus_size_t	size;
};
static struct hmap hmaps[64];

static struct hmap *
hmap_of(bus_space_handle_t h)
{

	if (h == 0 || h > __arraycount(hmaps) || !hmaps[h - 1].mapped)
		panic("bus_space: handle %#lx is not mapped", (u_long)h);
	return &hmaps[h - 1];
}

/* The extent: the free slot now reserving [base, base + size), or -1. */
static int
hspace_reserve(bus_space_tag_t t, bus_addr_t base, bus_size_t size)
{
	size_t i, freei = __arraycount(hmaps);

	if (size == 0)
		panic("bus_space: reserving zero bytes");
	pthread_mutex_lock(&hglobal);
	for (i = 0; i < __arraycount(hmaps); i++) {
		if (!hmaps[i].used) {
			if (freei == __arraycount(hmaps))
				freei = i;
			continue;
		}
		if (hmaps[i].t == t && base < hmaps[i].base + hmaps[i].size &&
		    hmaps[i].base < base + size) {
			pthread_mutex_unlock(&hglobal);
			/* x86: "bus_space_map: can't allocate region" */
			return -1;
		}
	}
	if (freei == __arraycount(hmaps))
		panic("bus_space: harness table full");
	hmaps[freei].used = true;
	hmaps[freei].mapped = false;
	hmaps[freei].t = t;
	hmaps[freei].base = base;
	hmaps[freei].size = size;
	pthread_mutex_unlock(&hglobal);
	return (int)freei;
}

/* The slot of reservation bsr, unmapped if `mapped' is false; or panic. */
static struct hmap *
hspace_find(bus_space_tag_t t, const bus_space_reservation_t *bsr,
    bool mapped, const char *what)
{
	size_t i;

	for (i = 0; i < __arraycount(hmaps); i++)
		if (hmaps[i].used && hmaps[i].t == t &&
		    hmaps[i].base == bsr->_bsr_start &&
		    hmaps[i].size == bsr->_bsr_size &&
		    hmaps[i].mapped == mapped)
			return &hmaps[i];
	panic("%s: no %s reservation at %#lx (%#lx)", what,
	    mapped ? "mapped" : "unmapped", (u_long)bsr->_bsr_start,
	    (u_long)bsr->_bsr_size);
}

int
bus_space_map(bus_space_tag_t t, bus_addr_t base, bus_size_t size, int flags,
    bus_space_handle_t *hp)
{
	int i;

	if ((i = hspace_reserve(t, base, size)) < 0)
		return EBUSY;
	hmaps[i].mapped = true;
	*hp = (bus_space_handle_t)i + 1;
	return 0;
}

void
bus_space_unmap(bus_space_tag_t t, bus_space_handle_t h, bus_size_t size)
{
	struct hmap *m = hmap_of(h);

	if (m->t != t || m->size != size)
		panic("bus_space_unmap: size %#lx, mapped %#lx", (u_long)size,
		    (u_long)m->size);
	pthread_mutex_lock(&hglobal);
	m->used = m->mapped = false;
	pthread_mutex_unlock(&hglobal);
}

int
bus_space_reserve(bus_space_tag_t t, bus_addr_t base, bus_size_t size,
    int flags, bus_space_reservation_t *bsrp)
{

	if (hspace_reserve(t, base, size) < 0)
		return EBUSY;
	bsrp->_bsr_start = base;
	bsrp->_bsr_size = size;
	return 0;
}

void
bus_space_release(bus_space_tag_t t, bus_space_reservation_t *bsrp)
{
	struct hmap *m;

	pthread_mutex_lock(&hglobal);
	m = hspace_find(t, bsrp, false, "bus_space_release");
	m->used = false;
	pthread_mutex_unlock(&hglobal);
}

int
bus_space_reservation_map(bus_space_tag_t t, bus_space_reservation_t *bsrp,
    int flags, bus_space_handle_t *hp)
{
	struct hmap *m;

	pthread_mutex_lock(&hglobal);
	m = hspace_find(t, bsrp, false, "bus_space_reservation_map");
	m->mapped = true;
	pthread_mutex_unlock(&hglobal);
	*hp = (bus_space_handle_t)(m - hmaps) + 1;
	return 0;
}

void
bus_space_reservation_unmap(bus_space_tag_t t, bus_space_handle_t h,
    bus_size_t size)
{
	struct hmap *m = hmap_of(h);

	if (m->t != t || m->size != size)
		panic("bus_space_reservation_unmap: size %#lx, mapped %#lx",
		    (u_long)size, (u_long)m->size);
	pthread_mutex_lock(&hglobal);
	m->mapped = false;	/* still reserved */
	pthread_mutex_unlock(&hglobal);
}

/* Bytes of memory space mapped into kernel VA (I/O space takes none). */
uint64_t
h_bar_kva(void)
{
	uint64_t n = 0;
	size_t i;

	pthread_mutex_lock(&hglobal);
	for (i = 0; i < __arraycount(hmaps); i++)
		if (hmaps[i].mapped && !hmaps[i].t->io)
			n += hmaps[i].size;
	pthread_mutex_unlock(&hglobal);
	return n;
}

paddr_t
bus_space_mmap(bus_space_tag_t t, bus_addr_t addr, off_t off, int prot,
    int flags)
{

	if (t->io)
		return (paddr_t)-1;
	return (paddr_t)((addr + (bus_addr_t)off) >> PAGE_SHIFT);
}

/* The byte of a BAR behind bus address a in space t, or NULL. */
static uint8_t *
hbar_byte(struct harness_bus_space *t, bus_addr_t a, int width)
{
	struct hfunc *hf = &hfuncs[H_DEV_NIC];
	uint64_t base;
	int i;

	for (i = 0; i < 6; i++) {
		if (hf->barsize[i] == 0)
			continue;
		base = CFG32(H_DEV_NIC, 0x10 + 4 * i);
		if (base & 1) {
			if (!t->io)
				continue;
			base &= ~3ULL;
		} else {
			if (t->io)
				continue;
			if ((base & 6) == 4)
				base |= (uint64_t)CFG32(H_DEV_NIC,
				    0x14 + 4 * i) << 32;
			base &= ~0xfULL;
		}
		if (a >= base && a + (bus_addr_t)width <= base + hf->barsize[i])
			return &hnic_mem[i][a - base];
	}
	return NULL;
}

static uint64_t
hbs_read(bus_space_tag_t t, bus_space_handle_t h, bus_size_t off, int w)
{
	struct hmap *m = hmap_of(h);
	uint8_t *p;
	uint64_t v = 0;

	if (m->t != t || off >= m->size || m->size - off < (bus_size_t)w)
		panic("bus_space_read_%d: offset %#lx beyond mapping of %#lx",
		    w, (u_long)off, (u_long)m->size);
	if ((p = hbar_byte(t, m->base + off, w)) == NULL)
		return ~0ULL;
	memcpy(&v, p, (size_t)w);
	return v;
}

static void
hbs_write(bus_space_tag_t t, bus_space_handle_t h, bus_size_t off, int w,
    uint64_t v)
{
	struct hmap *m = hmap_of(h);
	uint8_t *p;

	if (m->t != t || off >= m->size || m->size - off < (bus_size_t)w)
		panic("bus_space_write_%d: offset %#lx beyond mapping of %#lx",
		    w, (u_long)off, (u_long)m->size);
	if ((p = hbar_byte(t, m->base + off, w)) != NULL)
		memcpy(p, &v, (size_t)w);
}

uint8_t bus_space_read_1(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o)
{ return (uint8_t)hbs_read(t, h, o, 1); }
uint16_t bus_space_read_2(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o)
{ return (uint16_t)hbs_read(t, h, o, 2); }
uint32_t bus_space_read_4(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o)
{ return (uint32_t)hbs_read(t, h, o, 4); }
uint64_t bus_space_read_8(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o)
{ if (t->io) panic("bus_space_read_8 on I/O space"); return hbs_read(t, h, o, 8); }
void bus_space_write_1(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o, uint8_t v)
{ hbs_write(t, h, o, 1, v); }
void bus_space_write_2(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o, uint16_t v)
{ hbs_write(t, h, o, 2, v); }
void bus_space_write_4(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o, uint32_t v)
{ hbs_write(t, h, o, 4, v); }
void bus_space_write_8(bus_space_tag_t t, bus_space_handle_t h, bus_size_t o, uint64_t v)
{ if (t->io) panic("bus_space_write_8 on I/O space"); hbs_write(t, h, o, 8, v); }

/*
 * Interrupts: x86's pci_intr_alloc for MSI-X maps the table (msipic).
 */
struct hvec {
	int		(*fn)(void *);
	void		*arg;
	bool		established;
};
/* As many as an MSI-X capability can name (an input may rewrite it). */
static struct hvec hvecs[2048];
static pci_intr_type_t hintr_type;
static int hintr_n;
static bus_space_handle_t hmsix_h;
static bus_size_t hmsix_size;

int
pci_intr_alloc(const struct pci_attach_args *pa, pci_intr_handle_t **ihps,
    int *counts, pci_intr_type_t max_type)
{
	int n, i, error, max, off;
	pcireg_t v, bar;

	assert_sleepable("pci_intr_alloc", NULL);
	if (hintr_n != 0)
		panic("pci_intr_alloc: vectors already allocated");
	for (i = 0; i < PCI_INTR_TYPE_SIZE; i++)
		if (i != (int)max_type && counts[i] != 0)
			panic("harness: one interrupt type at a time");
	n = counts[max_type];
	switch (max_type) {
	case PCI_INTR_TYPE_INTX:
		if (n != 1 || pa->pa_intrpin == 0)
			return ENODEV;
		break;
	case PCI_INTR_TYPE_MSI:
		max = pci_msi_count(pa->pa_pc, pa->pa_tag);
		if (max == 0)
			return ENODEV;
		n = MIN(n, max);
		break;
	case PCI_INTR_TYPE_MSIX:
		max = pci_msix_count(pa->pa_pc, pa->pa_tag);
		if (max == 0)
			return ENODEV;
		n = MIN(n, max);
		/*
		 * msipic: map the MSI-X table, as many entries as the
		 * capability says, through the BAR its BIR names (the
		 * BAR's address read, not sized), and remember the size
		 * for the unmap.
		 */
		if (!pci_get_capability(pa->pa_pc, pa->pa_tag, PCI_CAP_MSIX,
		    &off, NULL))
			return ENODEV;
		v = pci_conf_read(pa->pa_pc, pa->pa_tag,
		    off + PCI_MSIX_TBLOFFSET);
		if ((v & PCI_MSIX_TBLBIR_MASK) > 5)
			return EINVAL;
		bar = pci_conf_read(pa->pa_pc, pa->pa_tag, PCI_MAPREG_START +
		    4 * (int)(v & PCI_MSIX_TBLBIR_MASK));
		if (bar & 1)
			return EINVAL;	/* an I/O BAR */
		hmsix_size = (bus_size_t)max * PCI_MSIX_TABLE_ENTRY_SIZE;
		error = bus_space_map(pa->pa_memt, (bar & ~0xfU) +
		    (v & PCI_MSIX_TBLOFFSET_MASK), hmsix_size, 0, &hmsix_h);
		if (error) {
			fprintf(stderr, "msipic: cannot map the MSI-X table "
			    "(error %d)\n", error);
			return error;
		}
		h_msix_maps++;
		break;
	default:
		return EINVAL;
	}
	hintr_type = max_type;
	hintr_n = n;
	counts[max_type] = n;
	*ihps = calloc((size_t)n, sizeof(**ihps));
	for (i = 0; i < n; i++)
		(*ihps)[i] = (pci_intr_handle_t)i;
	return 0;
}

void
pci_intr_release(pci_chipset_tag_t pc, pci_intr_handle_t *ihps, int n)
{

	if (n != hintr_n)
		panic("pci_intr_release: %d of %d vectors", n, hintr_n);
	if (hintr_type == PCI_INTR_TYPE_MSIX) {
		bus_space_unmap(&hmemt, hmsix_h, hmsix_size);
		h_msix_maps--;
	}
	hintr_n = 0;
	free(ihps);
}

int
pci_intr_setattr(pci_chipset_tag_t pc, pci_intr_handle_t *ih, int attr,
    uint64_t data)
{

	return 0;
}

void *
pci_intr_establish_xname(pci_chipset_tag_t pc, pci_intr_handle_t ih, int ipl,
    int (*fn)(void *), void *arg, const char *name)
{
	struct hvec *v;

	if (ih >= (pci_intr_handle_t)hintr_n)
		panic("pci_intr_establish: handle %lu not allocated",
		    (u_long)ih);
	v = &hvecs[ih];
	if (v->established)
		panic("pci_intr_establish: handle %lu established twice",
		    (u_long)ih);
	v->fn = fn;
	v->arg = arg;
	v->established = true;
	return v;
}

void
pci_intr_disestablish(pci_chipset_tag_t pc, void *cookie)
{
	struct hvec *v = cookie;

	assert_sleepable("pci_intr_disestablish", NULL);
	if (!v->established)
		panic("pci_intr_disestablish: not established");
	pthread_mutex_lock(&hglobal);
	v->established = false;
	v->fn = NULL;
	pthread_mutex_unlock(&hglobal);
}

/*
 * The NIC raises vector i (INTx: sets the status bit, vector 0); the
 * handler runs in interrupt context, then the soft interrupts.
 */
void
h_nic_raise(int i)
{
	struct hvec *v = &hvecs[i];
	struct hsoftint *s;
	int (*fn)(void *);
	void *arg;

	if (hintr_type == PCI_INTR_TYPE_INTX && hintr_n != 0)
		CFG32(H_DEV_NIC, PCI_COMMAND_STATUS_REG) |=
		    PCI_STATUS_INT_STATUS;
	pthread_mutex_lock(&hglobal);
	fn = v->established ? v->fn : NULL;
	arg = v->arg;
	pthread_mutex_unlock(&hglobal);
	if (fn == NULL)
		return;
	in_intr = 1;
	(void)fn(arg);
	in_intr = 0;
	for (;;) {
		pthread_mutex_lock(&hglobal);
		for (s = hsoftint_list; s != NULL && !s->pending; s = s->next)
			;
		if (s != NULL)
			s->pending = 0;
		pthread_mutex_unlock(&hglobal);
		if (s == NULL)
			break;
		s->fn(s->arg);
		h_softints_run++;
	}
}

void
h_nic_sticky_master(bool on)
{

	hfuncs[H_DEV_NIC].sticky_master = on;
	if (on)
		CFG32(H_DEV_NIC, PCI_COMMAND_STATUS_REG) |=
		    PCI_COMMAND_MASTER_ENABLE;
}

uint32_t
h_cfg_read(int dev, int reg)
{

	return hcfg_read(dev, 0, reg);
}

void
h_cfg_write(int dev, int reg, uint32_t v)
{

	hcfg_write(dev, 0, reg, v);
}

uint32_t
h_nic_bar_read4(int bar, uint64_t off)
{

	return *(uint32_t *)&hnic_mem[bar][off];
}

/*
 * bus_dma, after x86's bus_dma.c: physical pages from a bitmap, the
 * segments of a contiguous allocation split at `boundary', EFBIG
 * without freeing when that needs more than nsegs.
 */
#define	H_NPHYS		65536			/* 256 MiB */
#define	H_PHYS_BASE	0x10000000ULL
static unsigned char hphys[H_NPHYS];
/*
 * The pages bus_dma hands out, at most H_NPHYS: fuzz.c lowers it with physmem, so
 * that an allocation (and pci_user.c's memset of it) is megabytes, not
 * the hundreds an input's random size reached in the 1 GiB default.
 */
long	h_nphys = H_NPHYS;

struct hkva {
	char		*kva;
	size_t		size;
	bus_dma_segment_t *segs;
	int		nsegs;
	struct hkva	*next;
};
static struct hkva *hkvas;

static bool
hphys_run_free(long first, long n)
{
	long i;

	for (i = first; i < first + n; i++)
		if (i >= h_nphys || hphys[i])
			return false;
	return true;
}

int
bus_dmamem_alloc(bus_dma_tag_t t, bus_size_t size, bus_size_t alignment,
    bus_size_t boundary, bus_dma_segment_t *segs, int nsegs, int *rsegs,
    int flags)
{
	bus_size_t uboundary, bmask;
	bus_addr_t curaddr, lastaddr;
	long pages, first, i, *pl, step, n;
	int curseg;

	KASSERT(boundary == 0 || boundary >= PAGE_SIZE);
	KASSERT(powerof2(boundary) && powerof2(alignment));
	KASSERT(nsegs >= 1);
	if ((flags & BUS_DMA_NOWAIT) == 0)
		assert_sleepable("bus_dmamem_alloc(WAITOK)", NULL);
	size = round_page(size);
	pages = (long)(size / PAGE_SIZE);
	if (alignment < PAGE_SIZE)
		alignment = PAGE_SIZE;
	/*
	 * As x86: boundaries below size are accepted and the allocation
	 * split into segments; uvm_pglistalloc gets the next power of
	 * two at least size as its boundary.
	 */
	uboundary = 0;
	if (boundary != 0)
		for (uboundary = boundary; uboundary < size; uboundary <<= 1)
			;
	pl = calloc((size_t)pages, sizeof(*pl));
	pthread_mutex_lock(&hglobal);
	if (nsegs < pages || alignment > PAGE_SIZE || uboundary != 0) {
		/* uvm_pglistalloc_contig */
		step = (long)(alignment / PAGE_SIZE);
		for (first = 0; first + pages <= h_nphys; first += step) {
			curaddr = H_PHYS_BASE + (bus_addr_t)first * PAGE_SIZE;
			if (curaddr + size - 1 > t->maxaddr) {
				first = h_nphys;
				break;
			}
			if (uboundary != 0 && (curaddr & ~(uboundary - 1)) !=
			    ((curaddr + size - 1) & ~(uboundary - 1)))
				continue;
			if (hphys_run_free(first, pages))
				break;
		}
		if (first + pages > h_nphys) {
			pthread_mutex_unlock(&hglobal);
			free(pl);
			return ENOMEM;
		}
		for (i = 0; i < pages; i++)
			pl[i] = first + i;
	} else {
		/* uvm_pglistalloc_simple: any pages (here every other). */
		n = 0;
		for (i = 0; i < h_nphys && n < pages; i += 2)
			if (!hphys[i] && H_PHYS_BASE + (bus_addr_t)i *
			    PAGE_SIZE + PAGE_SIZE - 1 <= t->maxaddr)
				pl[n++] = i;
		if (n < pages) {
			pthread_mutex_unlock(&hglobal);
			free(pl);
			return ENOMEM;
		}
	}
	for (i = 0; i < pages; i++)
		hphys[pl[i]] = 1;
	h_phys_pages += pages;
	pthread_mutex_unlock(&hglobal);

	/* The segments, as _bus_dmamem_alloc_range computes them. */
	bmask = boundary != 0 ? ~(boundary - 1) : 0;
	curseg = 0;
	lastaddr = segs[0].ds_addr = H_PHYS_BASE + (bus_addr_t)pl[0] *
	    PAGE_SIZE;
	segs[0].ds_len = PAGE_SIZE;
	for (i = 1; i < pages; i++) {
		curaddr = H_PHYS_BASE + (bus_addr_t)pl[i] * PAGE_SIZE;
		if (curaddr == lastaddr + PAGE_SIZE &&
		    (lastaddr & bmask) == (curaddr & bmask))
			segs[curseg].ds_len += PAGE_SIZE;
		else {
			curseg++;
			if (curseg >= nsegs) {
				/* x86 returns without uvm_pglistfree. */
				__atomic_add_fetch(&h_leaked_pages, pages,
				    __ATOMIC_SEQ_CST);
				free(pl);
				return EFBIG;
			}
			segs[curseg].ds_addr = curaddr;
			segs[curseg].ds_len = PAGE_SIZE;
		}
		lastaddr = curaddr;
	}
	free(pl);
	*rsegs = curseg + 1;
	return 0;
}

void
bus_dmamem_free(bus_dma_tag_t t, bus_dma_segment_t *segs, int nsegs)
{
	bus_addr_t a;
	long pg;
	int i;

	pthread_mutex_lock(&hglobal);
	if (CFG32(t->dev, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_MASTER_ENABLE)
		h_freed_while_master++;
	for (i = 0; i < nsegs; i++) {
		for (a = segs[i].ds_addr; a < segs[i].ds_addr + segs[i].ds_len;
		    a += PAGE_SIZE) {
			pg = (long)((a - H_PHYS_BASE) / PAGE_SIZE);
			if (a < H_PHYS_BASE || pg >= H_NPHYS || !hphys[pg])
				panic("bus_dmamem_free: page %#lx not "
				    "allocated", (u_long)a);
			hphys[pg] = 0;
			h_phys_pages--;
		}
	}
	pthread_mutex_unlock(&hglobal);
}

int
bus_dmamem_map(bus_dma_tag_t t, bus_dma_segment_t *segs, int nsegs,
    size_t size, void **kvap, int flags)
{
	struct hkva *k;
	bus_size_t total = 0;
	int i;

	for (i = 0; i < nsegs; i++)
		total += segs[i].ds_len;
	if (round_page(size) != total)
		panic("bus_dmamem_map: size %zu, segments %#lx", size,
		    (u_long)total);
	k = calloc(1, sizeof(*k));
	k->kva = aligned_alloc(PAGE_SIZE, total);
	k->size = total;
	k->nsegs = nsegs;
	k->segs = calloc((size_t)nsegs, sizeof(*segs));
	memcpy(k->segs, segs, (size_t)nsegs * sizeof(*segs));
	pthread_mutex_lock(&hglobal);
	k->next = hkvas;
	hkvas = k;
	pthread_mutex_unlock(&hglobal);
	*kvap = k->kva;
	return 0;
}

void
bus_dmamem_unmap(bus_dma_tag_t t, void *kva, size_t size)
{
	struct hkva **p, *k;

	pthread_mutex_lock(&hglobal);
	for (p = &hkvas; *p != NULL && (*p)->kva != kva; p = &(*p)->next)
		;
	if ((k = *p) == NULL || k->size != round_page(size))
		panic("bus_dmamem_unmap: %p (%zu) not mapped", kva, size);
	*p = k->next;
	pthread_mutex_unlock(&hglobal);
	free(k->kva);
	free(k->segs);
	free(k);
}

paddr_t
bus_dmamem_mmap(bus_dma_tag_t t, bus_dma_segment_t *segs, int nsegs,
    off_t off, int prot, int flags)
{
	int i;

	if (off < 0 || (off & (off_t)PAGE_MASK))
		panic("bus_dmamem_mmap: offset %#lx", (u_long)off);
	for (i = 0; i < nsegs; i++) {
		if ((bus_size_t)off < segs[i].ds_len)
			return (paddr_t)((segs[i].ds_addr + (bus_addr_t)off) >>
			    PAGE_SHIFT);
		off -= (off_t)segs[i].ds_len;
	}
	return (paddr_t)-1;
}

static long h_maps;

int
bus_dmamap_create(bus_dma_tag_t t, bus_size_t size, int nsegments,
    bus_size_t maxsegsz, bus_size_t boundary, int flags, bus_dmamap_t *mapp)
{
	bus_dmamap_t map;

	KASSERT(nsegments >= 1 && size != 0 && maxsegsz != 0);
	KASSERT(boundary == 0 || (powerof2(boundary) &&
	    boundary >= PAGE_SIZE));
	if ((flags & BUS_DMA_NOWAIT) == 0)
		assert_sleepable("bus_dmamap_create(WAITOK)", NULL);
	map = calloc(1, sizeof(*map) +
	    (size_t)(nsegments - 1) * sizeof(bus_dma_segment_t));
	map->_dm_size = size;
	map->_dm_segcnt = nsegments;
	map->_dm_maxsegsz = maxsegsz;
	map->_dm_boundary = boundary;
	map->dm_maxsegsz = maxsegsz;
	__atomic_add_fetch(&h_maps, 1, __ATOMIC_SEQ_CST);
	*mapp = map;
	return 0;
}

void
bus_dmamap_destroy(bus_dma_tag_t t, bus_dmamap_t map)
{

	free(map);
	__atomic_sub_fetch(&h_maps, 1, __ATOMIC_SEQ_CST);
}

int
bus_dmamap_load(bus_dma_tag_t t, bus_dmamap_t map, void *buf, bus_size_t len,
    struct proc *p, int flags)
{
	struct hkva *k;
	bus_addr_t pa, lastend = 0, baddr;
	bus_size_t off, o, sgsize, bmask;
	int seg = -1, i;

	map->dm_mapsize = 0;
	map->dm_nsegs = 0;
	if (len > map->_dm_size)
		return EINVAL;
	pthread_mutex_lock(&hglobal);
	for (k = hkvas; k != NULL; k = k->next)
		if ((char *)buf >= k->kva && (char *)buf + len <= k->kva +
		    k->size)
			break;
	pthread_mutex_unlock(&hglobal);
	if (k == NULL)
		panic("bus_dmamap_load: %p is not DMA memory here", buf);
	bmask = map->_dm_boundary ? ~(map->_dm_boundary - 1) : 0;
	off = (bus_size_t)((char *)buf - k->kva);
	while (len > 0) {
		/* The physical address of kernel offset off. */
		o = off;
		for (i = 0; o >= k->segs[i].ds_len; i++)
			o -= k->segs[i].ds_len;
		pa = k->segs[i].ds_addr + o;
		sgsize = PAGE_SIZE - (pa & PAGE_MASK);
		if (sgsize > len)
			sgsize = len;
		if (map->_dm_boundary != 0) {
			baddr = (pa + map->_dm_boundary) & bmask;
			if (sgsize > baddr - pa)
				sgsize = baddr - pa;
		}
		if (seg >= 0 && pa == lastend &&
		    map->dm_segs[seg].ds_len + sgsize <= map->_dm_maxsegsz &&
		    (map->_dm_boundary == 0 ||
		    (map->dm_segs[seg].ds_addr & bmask) == (pa & bmask)))
			map->dm_segs[seg].ds_len += sgsize;
		else {
			if (++seg >= map->_dm_segcnt) {
				map->dm_mapsize = 0;
				map->dm_nsegs = 0;
				return EFBIG;
			}
			map->dm_segs[seg].ds_addr = pa;
			map->dm_segs[seg].ds_len = sgsize;
		}
		lastend = pa + sgsize;
		off += sgsize;
		len -= sgsize;
		map->dm_mapsize += sgsize;
	}
	map->dm_nsegs = seg + 1;
	return 0;
}

void
bus_dmamap_unload(bus_dma_tag_t t, bus_dmamap_t map)
{

	map->dm_mapsize = 0;
	map->dm_nsegs = 0;
}

void
bus_dmamap_sync(bus_dma_tag_t t, bus_dmamap_t map, bus_addr_t off,
    bus_size_t len, int ops)
{

	/* x86 bus_dma.c, not only under DIAGNOSTIC. */
	if ((ops & (BUS_DMASYNC_PREREAD | BUS_DMASYNC_PREWRITE)) != 0 &&
	    (ops & (BUS_DMASYNC_POSTREAD | BUS_DMASYNC_POSTWRITE)) != 0)
		panic("_bus_dmamap_sync: mix PRE and POST");
	/* DIAGNOSTIC kernels, and ports that check (zero length). */
	if (off >= map->dm_mapsize)
		panic("_bus_dmamap_sync: bad offset %#lx >= %#lx",
		    (u_long)off, (u_long)map->dm_mapsize);
	if (len == 0 || off + len > map->dm_mapsize)
		panic("_bus_dmamap_sync: bad length %#lx", (u_long)len);
}

int
bus_dmatag_subregion(bus_dma_tag_t t, bus_addr_t min, bus_addr_t max,
    bus_dma_tag_t *newp, int flags)
{
	bus_dma_tag_t n;

	if (max >= t->maxaddr) {
		*newp = t;
		return 0;
	}
	n = calloc(1, sizeof(*n));
	n->maxaddr = max;
	n->sub = true;
	n->dev = t->dev;
	__atomic_add_fetch(&h_subtags, 1, __ATOMIC_SEQ_CST);
	*newp = n;
	return 0;
}

void
bus_dmatag_destroy(bus_dma_tag_t t)
{

	if (!t->sub)
		return;
	free(t);
	__atomic_sub_fetch(&h_subtags, 1, __ATOMIC_SEQ_CST);
}

/*
 * uvm.
 */
static __thread int h_unlockall;
static __thread uint64_t h_last_pa;

void
uvm_obj_init(struct uvm_object *uo, const struct uvm_pagerops *ops,
    bool alock, u_int refs)
{

	rw_init(&uo->uo_lock);
	uo->vmobjlock = &uo->uo_lock;
	uo->pgops = ops;
	uo->uo_refs = (int)refs;
}

void
uvm_obj_destroy(struct uvm_object *uo, bool dlock)
{

	if (uo->uo_refs != 0)
		panic("uvm_obj_destroy: %d references", uo->uo_refs);
	rw_destroy(&uo->uo_lock);
}

static void
udv_reference(struct uvm_object *uo)
{

	__atomic_add_fetch(&uo->uo_refs, 1, __ATOMIC_SEQ_CST);
}

static void
udv_detach(struct uvm_object *uo)
{

	__atomic_sub_fetch(&uo->uo_refs, 1, __ATOMIC_SEQ_CST);
}

static const struct uvm_pagerops udv_ops = {
	.pgo_reference = udv_reference,
	.pgo_detach = udv_detach,
};
static struct uvm_object udv_obj = { .pgops = &udv_ops };

struct uvm_object *
udv_attach(dev_t dev, vm_prot_t prot, voff_t off, vsize_t size)
{

	udv_reference(&udv_obj);
	return &udv_obj;
}

void
uvmfault_unlockall(struct uvm_faultinfo *ufi, struct vm_amap *amap,
    struct uvm_object *uobj)
{

	if (uobj != NULL)
		rw_exit(uobj->vmobjlock);
	h_unlockall++;
}

void
uvm_wait(const char *wmsg)
{

	assert_sleepable("uvm_wait", NULL);
}

/*
 * pmap: the user mappings that faults entered, one per page of an
 * object (h_fault's VA stands for it), and x86's pv tracking of
 * unmanaged pages.  A mapping entered while its page was tracked
 * (pmap_pv_track) is recorded and revoked by pmap_pv_protect; one
 * entered before cannot be found, as on x86.
 */
struct hpte {
	bool		used;
	bool		tracked;
	struct uvm_object *uo;
	uint64_t	off;
	paddr_t		pa;
};
static struct hpte hptes[512];
static struct {
	bool		used;
	paddr_t		pa;
	psize_t		size;
} hpvts[16];
static __thread struct uvm_object *hfault_uo;
static __thread uint64_t hfault_off;

static bool
hpv_tracked(paddr_t pa)
{
	size_t i;

	for (i = 0; i < __arraycount(hpvts); i++)
		if (hpvts[i].used && pa >= hpvts[i].pa &&
		    pa - hpvts[i].pa < hpvts[i].size)
			return true;
	return false;
}

int
pmap_enter(struct pmap *pm, vaddr_t va, paddr_t pa, vm_prot_t prot,
    u_int flags)
{
	struct hpte *e, *fe = NULL;
	size_t i;

	if (h_pmap_fail > 0) {
		h_pmap_fail--;
		if ((flags & PMAP_CANFAIL) == 0)
			panic("pmap_enter: no memory and no PMAP_CANFAIL");
		return ENOMEM;
	}
	h_last_pa = pa;
	pthread_mutex_lock(&hglobal);
	for (i = 0; i < __arraycount(hptes); i++) {
		e = &hptes[i];
		if (e->used && e->uo == hfault_uo && e->off == hfault_off)
			break;		/* the same page again: replaced */
		if (!e->used && fe == NULL)
			fe = e;
	}
	if (i == __arraycount(hptes) && (e = fe) == NULL)
		panic("pmap_enter: harness table full");
	e->used = true;
	e->uo = hfault_uo;
	e->off = hfault_off;
	e->pa = pa;
	e->tracked = hpv_tracked(pa);
	pthread_mutex_unlock(&hglobal);
	return 0;
}

void
pmap_pv_track(paddr_t pa, psize_t size)
{
	size_t i, fi = __arraycount(hpvts);

	pthread_mutex_lock(&hglobal);
	for (i = 0; i < __arraycount(hpvts); i++) {
		if (!hpvts[i].used) {
			if (fi == __arraycount(hpvts))
				fi = i;
		} else if (pa < hpvts[i].pa + hpvts[i].size &&
		    hpvts[i].pa < pa + size)
			panic("pmap_pv_track: %#lx tracked twice", pa);
	}
	if (fi == __arraycount(hpvts))
		panic("pmap_pv_track: harness table full");
	hpvts[fi].used = true;
	hpvts[fi].pa = pa;
	hpvts[fi].size = size;
	pthread_mutex_unlock(&hglobal);
}

/* The pv heads go with the tracking: no recorded mapping may be left. */
void
pmap_pv_untrack(paddr_t pa, psize_t size)
{
	size_t i;

	pthread_mutex_lock(&hglobal);
	for (i = 0; i < __arraycount(hptes); i++)
		if (hptes[i].used && hptes[i].tracked && hptes[i].pa >= pa &&
		    hptes[i].pa - pa < size)
			panic("pmap_pv_untrack: %#lx still mapped",
			    hptes[i].pa);
	for (i = 0; i < __arraycount(hpvts); i++)
		if (hpvts[i].used && hpvts[i].pa == pa &&
		    hpvts[i].size == size)
			break;
	if (i == __arraycount(hpvts))
		panic("pmap_pv_untrack: %#lx (%#lx) not tracked", pa, size);
	hpvts[i].used = false;
	pthread_mutex_unlock(&hglobal);
}

/* Only revocation (VM_PROT_NONE) is modelled. */
void
pmap_pv_protect(paddr_t pa, vm_prot_t prot)
{
	size_t i;

	if (prot != VM_PROT_NONE)
		panic("pmap_pv_protect: prot %d not modelled", prot);
	pthread_mutex_lock(&hglobal);
	if (!hpv_tracked(pa))
		panic("pmap_pv_protect: %#lx not tracked", pa);
	for (i = 0; i < __arraycount(hptes); i++)
		if (hptes[i].used && hptes[i].tracked && hptes[i].pa == pa)
			hptes[i].used = false;
	pthread_mutex_unlock(&hglobal);
}

/* The user mappings of physical page pa that are left. */
int
h_user_mapped(uint64_t pa)
{
	size_t i;
	int n = 0;

	pthread_mutex_lock(&hglobal);
	for (i = 0; i < __arraycount(hptes); i++)
		n += hptes[i].used && hptes[i].pa == pa;
	pthread_mutex_unlock(&hglobal);
	return n;
}

/* munmap: the mappings of the object go (pmap_remove), then the object. */
void
h_munmap(struct uvm_object *uobj)
{
	size_t i;

	pthread_mutex_lock(&hglobal);
	for (i = 0; i < __arraycount(hptes); i++)
		if (hptes[i].used && hptes[i].uo == uobj)
			hptes[i].used = false;
	pthread_mutex_unlock(&hglobal);
	uobj->pgops->pgo_detach(uobj);
}

void
pmap_update(struct pmap *pm)
{
}

/*
 * pci(4): device_lookup_private and pci_usrreq.c's ioctls.
 */
void *
device_lookup_private(struct cfdriver *cd, int unit)
{

	return unit == 0 && hsc_attached ? &hsc : NULL;
}

int
cdev_ioctl(dev_t dev, u_long cmd, void *data, int flag, struct lwp *l)
{
	struct pciio_bdf_cfgreg *b = data;
	int error = 0;

	harness_kernel_lock();
	switch (cmd) {
	case PCI_IOC_BDF_CFGWRITE:
		if ((flag & FWRITE) == 0) {
			error = EBADF;
			break;
		}
		/* FALLTHROUGH */
	case PCI_IOC_BDF_CFGREAD:
		if (b->bus != 0 || b->device >= 32 || b->function > 7 ||
		    (b->cfgreg.reg & 3) || b->cfgreg.reg >= PCI_CONF_SIZE) {
			error = EINVAL;
			break;
		}
		if (cmd == PCI_IOC_BDF_CFGREAD)
			b->cfgreg.val = hcfg_read((int)b->device,
			    (int)b->function, (int)b->cfgreg.reg);
		else
			hcfg_write((int)b->device, (int)b->function,
			    (int)b->cfgreg.reg, b->cfgreg.val);
		break;
	default:
		error = ENOTTY;
		break;
	}
	harness_kernel_unlock();
	return error;
}

/*
 * The "system calls" and the boot of the stand-in kernel.
 */
int	pciuser_open(dev_t, int, int, struct lwp *);
int	pciuser_busdetach(struct pci_softc *, int);
void	pciuser_busdetach_done(struct pci_softc *);
void	sysctl_hw_pciuser_setup(struct sysctllog **);

void
h_boot(void)
{
	int i;

	memset(hfuncs, 0, sizeof(hfuncs));
	hfunc_init_nic();
	hfunc_init_victim();
	hfunc_init_slow();
	memset(&hsc, 0, sizeof(hsc));
	memset(halldevs, 0, sizeof(halldevs));
	for (i = 0; i < 32; i++) {
		hdmat[i] = (struct harness_dma_tag){ 0xffffffffULL, false, i };
		hdmat64[i] = (struct harness_dma_tag){ ~0ULL, false, i };
	}
	hpci_dev.dv_private = &hsc;
	hsc.sc_dev = &hpci_dev;
	hsc.sc_pc = &hpc;
	hsc.sc_bus = 0;
	hsc.sc_maxndevs = 32;
	hsc.PCI_SC_DEVICESC(H_DEV_VICTIM, 0).c_dev = &hvictim_dev;
	hsc_attached = true;
	sysctl_hw_pciuser_setup(NULL);
}

int
h_open(int flags, struct file **fpp)
{
	int error;

	h_cloned = NULL;
	/* cdev_open: pci_cdevsw is not D_MPSAFE. */
	harness_kernel_lock();
	error = pciuser_open(makedev(30, 0), flags, 0, curlwp);
	harness_kernel_unlock();
	*fpp = error ? NULL : h_cloned;
	return error;
}

int
h_ioctl(struct file *fp, unsigned long cmd, void *arg)
{
	unsigned char buf[IOCPARM_MASK + 1] __attribute__((aligned(16)));
	size_t len = IOCPARM_LEN(cmd);
	int error;

	memset(buf, 0, len);
	if ((cmd & IOC_IN) && len > 0)
		memcpy(buf, arg, len);
	error = fp->f_ops->fo_ioctl(fp, cmd, len > 0 ? buf : arg);
	if (error == 0 && (cmd & IOC_OUT) && len > 0)
		memcpy(arg, buf, len);
	return error;
}

int
h_close(struct file *fp)
{
	int error;

	error = fp->f_ops->fo_close(fp);
	free(fp);
	__atomic_sub_fetch(&h_files, 1, __ATOMIC_SEQ_CST);
	return error;
}

int
h_read(struct file *fp, void *buf, size_t len, size_t *got, int nonblock)
{
	struct uio uio;
	off_t off = 0;
	int error;

	memset(&uio, 0, sizeof(uio));
	uio.uio_buf = buf;
	uio.uio_resid = (ssize_t)len;
	uio.uio_rw = UIO_READ;
	uio.uio_fault = buf == NULL;
	if (nonblock)
		fp->f_flag |= FNONBLOCK;
	else
		fp->f_flag &= ~FNONBLOCK;
	error = fp->f_ops->fo_read(fp, &off, &uio, fp->f_cred, 0);
	if (got)
		*got = len - (size_t)uio.uio_resid;
	return error;
}

int
h_poll(struct file *fp, int events)
{

	return fp->f_ops->fo_poll(fp, events);
}

int
h_mmap(struct file *fp, uint64_t off, size_t size, int prot, int flags,
    struct uvm_object **uobjp)
{
	off_t o = (off_t)off;
	int fl = flags, advice = 0, maxprot = 0;

	*uobjp = NULL;
	return fp->f_ops->fo_mmap(fp, &o, size, prot, &fl, &advice, uobjp,
	    &maxprot);
}


int
h_fault(struct uvm_object *uobj, uint64_t off, int prot, uint64_t *pa)
{
	struct vm_map_entry entry;
	struct vm_map map;
	struct uvm_faultinfo ufi;
	struct vm_page *pps[1] = { NULL };
	int error;

	memset(&entry, 0, sizeof(entry));
	entry.start = 0x700000000000UL;
	entry.end = entry.start + PAGE_SIZE;
	entry.object.uvm_obj = uobj;
	entry.offset = (voff_t)off;
	entry.protection = prot;
	map.pmap = NULL;
	ufi.orig_map = &map;
	ufi.entry = &entry;
	h_unlockall = 0;
	h_last_pa = ~0UL;
	hfault_uo = uobj;
	hfault_off = off;
	/* uvm_fault calls pgo_fault with the object locked. */
	rw_enter(uobj->vmobjlock, RW_WRITER);
	error = uobj->pgops->pgo_fault(&ufi, entry.start, pps, 1, 0, prot, 0);
	if (h_unlockall != 1)
		panic("pgo_fault returned with %d uvmfault_unlockall calls",
		    h_unlockall);
	if (pa)
		*pa = h_last_pa;
	return error;
}

int
h_kqueue(struct file *fp, struct knote **knp)
{
	struct knote *kn = calloc(1, sizeof(*kn));
	int error;

	kn->kn_filter = EVFILT_READ;
	error = fp->f_ops->fo_kqfilter(fp, kn);
	if (error) {
		free(kn);
		kn = NULL;
	}
	*knp = kn;
	return error;
}

void
h_kqueue_drop(struct knote *kn)
{

	kn->kn_fop->f_detach(kn);
	free(kn);
}

/* pcidetach() of pci0 with the hooks apply.sh adds. */
int
h_detach(int flags)
{
	int error;

	harness_kernel_lock();
	error = pciuser_busdetach(&hsc, flags);
	if (error == 0) {
		/* Children may sleep: the kernel lock goes (h_gate). */
		error = hdetach_children(flags);
		pciuser_busdetach_done(&hsc);
		if (error == 0)
			hsc_attached = false;
	}
	harness_kernel_unlock();
	return error;
}

/*
 * Reset the stand-in kernel's global state between fuzz inputs (fuzz.c):
 * counters, the lock order seen, the sysctl nodes, the NIC's BARs.
 * What must be empty after an input (kmem, maps, files, ...) is
 * h_shutdown_check's job, not reset here.
 */
void
h_reset(void)
{
	int i;

	pthread_mutex_lock(&hglobal);
	memset(horder, 0, sizeof(horder));
	pthread_mutex_unlock(&hglobal);
	hnsysctl = 0;
	/* Only what hbar_byte() reaches: 148 KiB, not the array's 768. */
	for (i = 0; i < 6; i++)
		memset(hnic_mem[i], 0, hfuncs[H_DEV_NIC].barsize[i]);
	h_kauth_deny = 0;
	h_pmap_fail = 0;
	h_phys_pages = 0;
	h_leaked_pages = 0;
	h_sizing_with_decode = 0;
	h_freed_while_master = 0;
	h_msix_maps = 0;
	h_softints_run = 0;
	h_gate_hook = NULL;
	h_slow_attached = 0;
}

void
h_thread_begin(void)
{
}

int
h_shutdown_check(char *buf, size_t len)
{
	size_t i, n, nmaps = 0;
	int bad = 0;

	buf[0] = '\0';
	if (hsc_attached && h_detach(DETACH_FORCE) != 0) {
		snprintf(buf, len, "final forced detach failed");
		return 1;
	}
	for (i = 0; i < __arraycount(hmaps); i++)
		nmaps += hmaps[i].used;
#define	CHECK(cond, ...) do {						\
	if (cond) {							\
		size_t l = strlen(buf);					\
		snprintf(buf + l, len - l, __VA_ARGS__);		\
		bad = 1;						\
	}								\
} while (0)
	CHECK(nheld != 0, " %d locks still held;", nheld);
	CHECK(kmem_bytes != 0, " kmem: %ld bytes in %ld allocations not "
	    "freed;", kmem_bytes, kmem_allocs);
	CHECK(h_softints != 0, " %ld softints established;", h_softints);
	CHECK(h_subtags != 0, " %ld DMA subtags not destroyed;", h_subtags);
	CHECK(h_maps != 0, " %ld dmamaps not destroyed;", h_maps);
	CHECK(hintr_n != 0, " %d interrupt vectors not released;", hintr_n);
	CHECK(nmaps != 0, " %zu bus_space mappings left;", nmaps);
	CHECK(hkvas != NULL, " dmamem kernel mappings left;");
	CHECK(h_files != 0, " %ld files open;", h_files);
	for (i = 0, n = 0; i < __arraycount(halldevs); i++)
		n += halldevs[i] != NULL;
	CHECK(n != 0, " %zu devices attached;", n);
	for (i = 0, n = 0; i < __arraycount(hptes); i++)
		n += hptes[i].used;
	CHECK(n != 0, " %zu user mappings left;", n);
	for (i = 0, n = 0; i < __arraycount(hpvts); i++)
		n += hpvts[i].used;
	CHECK(n != 0, " %zu pv-tracked ranges left;", n);
	CHECK(udv_obj.uo_refs != 0, " udv object has %d references;",
	    udv_obj.uo_refs);
#undef CHECK
	return bad;
}
