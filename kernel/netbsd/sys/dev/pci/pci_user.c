/*	$NetBSD$	*/

/*-
 * Copyright (c) 2026 The upci authors.
 * All rights reserved.
 *
 * Redistribution and use in source and binary forms, with or without
 * modification, are permitted provided that the following conditions
 * are met:
 * 1. Redistributions of source code must retain the above copyright
 *    notice, this list of conditions and the following disclaimer.
 * 2. Redistributions in binary form must reproduce the above copyright
 *    notice, this list of conditions and the following disclaimer in the
 *    documentation and/or other materials provided with the distribution.
 *
 * THIS SOFTWARE IS PROVIDED BY THE AUTHORS AND CONTRIBUTORS ``AS IS''
 * AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO,
 * THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR
 * PURPOSE ARE DISCLAIMED.  IN NO EVENT SHALL THE AUTHORS OR CONTRIBUTORS
 * BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR
 * CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
 * SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
 * INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN
 * CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE)
 * ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE
 * POSSIBILITY OF SUCH DAMAGE.
 */

/*
 * pci(4) user driver support: a process claims one PCI function that
 * has no kernel driver, maps its memory BARs, reaches its I/O BARs
 * through ioctls, receives its interrupts as events and allocates DMA
 * memory and DMA maps through bus_dma(9).
 *
 * Every open of /dev/pciN is cloned (fd_clone) into a struct
 * pciuser_file, so the claim and everything hanging off it belong to
 * one open file and are torn down by its last close, or by the detach
 * of the pci bus.  Unclaimed files behave like the old /dev/pciN:
 * unknown ioctls go to pci_usrreq.c through cdev_ioctl() and mmap to
 * pcimmap() through udv_attach().
 *
 * The threat model and the reasoning behind every bound are in
 * DESIGN.md; the limits a user meets are in pciuser(4).
 *
 * Locking (no adaptive lock is held across a sleep that a user can
 * make long; the sleeps of an ioctl happen under pf_busy, a flag that
 * others wait for interruptibly):
 *	pciuser_lock		(adaptive) buses and their files, the claim
 *				registry and each claim's c_dev and c_pf,
 *				DMA accounting, bus and file references
 *	pf_lock			(adaptive) pf_busy, pf_claim (which
 *				pciuser_lock guards too) and the lists
 *				mmap looks things up in
 *	pf_intr_lock		(spin, IPL_VM) interrupt counters, the INTx
 *				mask state, every command register
 *				read-modify-write, the klist
 *	vmobjlock of c_uobj and m_uobj: reference counts of the pagers
 * Lock order: pciuser_lock -> pf_lock -> pf_intr_lock.
 *
 * Lifetime of the pci bus (as sys/dev/usb/ugen.c 1.177 does it): every
 * file operation but close takes a reference on its pciuser_bus and its
 * file, which fails once the bus or the file is dying;
 * pciuser_busdetach() marks the bus dying, wakes sleepers, waits for
 * the references to drain and then tears down the claims of the files
 * still open, which later only see ENXIO.
 *
 * A claimed function is owned by an autoconf child of the pci bus, a
 * pciuser device attached at the function's locators for as long as the
 * claim lives (as ugen(4) owns a USB device no driver wanted): the
 * claim attaches it through pci_probe_device(), so pci(4) records it as
 * the function's driver and a rescan attaches nothing there.  The child
 * holds a reference on the claim; when the last other one goes the
 * child is detached.  A forced detach of the child (its bus going)
 * revokes the claim exactly as a forced detach of the bus does; a
 * non-forced one fails with EBUSY while the claim lives.
 */

#include <sys/cdefs.h>
__KERNEL_RCSID(0, "$NetBSD$");

#include <sys/param.h>
#include <sys/types.h>
#include <sys/bus.h>
#include <sys/conf.h>
#include <sys/condvar.h>
#include <sys/device.h>
#include <sys/errno.h>
#include <sys/event.h>
#include <sys/fcntl.h>
#include <sys/file.h>
#include <sys/filedesc.h>
#include <sys/intr.h>
#include <sys/ioctl.h>
#include <sys/kauth.h>
#include <sys/kmem.h>
#include <sys/mman.h>
#include <sys/mutex.h>
#include <sys/once.h>
#include <sys/poll.h>
#include <sys/proc.h>
#include <sys/queue.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/sysctl.h>
#include <sys/systm.h>
#include <sys/uio.h>

#include <uvm/uvm.h>
#include <uvm/uvm_device.h>

#include <dev/pci/pcireg.h>
#include <dev/pci/pcivar.h>
#include <dev/pci/pciio.h>
#include <dev/pci/pciuserio.h>

#include "locators.h"

/*
 * NetBSD 10 changed interfaces this file uses (read from NetBSD 10's
 * own sources, see kernel/netbsd/README.md): uvm_object's vmobjlock is
 * a krwlock_t, struct fileops has fo_name, knotes go on a selinfo with
 * selrecord_knote()/selremove_knote(), EOF is set with knote_set_eof()
 * and filterops have f_flags.  The 9.99 snapshots in between are not a
 * target.
 */
#if __NetBSD_Prereq__(10, 0, 0)
#define	PCIUSER_NETBSD10	1
#endif

#ifdef PCIUSER_NETBSD10
#define	pciuser_obj_lock(uobj)		rw_enter((uobj)->vmobjlock, RW_WRITER)
#define	pciuser_obj_unlock(uobj)	rw_exit((uobj)->vmobjlock)
#else
#define	pciuser_obj_lock(uobj)		mutex_enter((uobj)->vmobjlock)
#define	pciuser_obj_unlock(uobj)	mutex_exit((uobj)->vmobjlock)
#endif

#define	PCIUSER_MMAP_MASK	(((uint64_t)1 << PCIUSER_MMAP_SHIFT) - 1)
#define	PCIUSER_CSR_CMDMASK	0x0000ffffU	/* command half of the CSR */
#define	PCIUSER_CFGW_MAX	16	/* config write rules per claim */
#define	PCIUSER_CAPWALK_MAX	48	/* capability list loop guard */
#define	PCIUSER_BUS_SIZE_MAX	((uint64_t)(bus_size_t)~(bus_size_t)0)

extern const struct cdevsw pci_cdevsw;

struct pciuser_barstate {
	bus_addr_t		b_base;
	bus_size_t		b_size;
	int			b_mapflags;	/* BUS_SPACE_MAP_* */
	uint32_t		b_uflags;	/* PCIUSER_BAR_* */
	bus_space_tag_t		b_tag;
	/*
	 * Reserved at claim in two pieces, [0, b_gap_lo) and
	 * [b_gap_hi, b_size), each with its handle.  The gap is the MSI-X
	 * table, which x86 msipic maps itself when MSI-X vectors are
	 * allocated (no gap: both are b_size).  With bus_space_reserve(9)
	 * (x86) a piece takes kernel VA only from its first PIO on: a
	 * process that mmaps its BARs costs the kernel no VA for them.
	 * Elsewhere bus_space_map(9) is the only reservation.
	 */
#ifdef __HAVE_NEW_STYLE_BUS_H
	bus_space_reservation_t	b_bsr[2];
#endif
	bool			b_reserved[2];
	bus_space_handle_t	b_handle[2];
	bool			b_hmapped[2];
	bus_size_t		b_gap_lo, b_gap_hi;
	bool			b_mapped;	/* reserved */
	bool			b_tracked;	/* pmap_pv_track()ed */
	/* Kernel-owned ranges (MSI-X table, PBA): [off, off + size). */
	uint64_t		b_hole_off[2];
	uint64_t		b_hole_size[2];
};

/*
 * One allowlisted config dword range: the user's bits wmask are
 * written, the kernel's bits keep are preserved from the current
 * value, every other bit is written as 0 (read-only, or
 * write-one-to-clear and not the user's to clear).
 */
struct pciuser_cfgw {
	uint32_t		w_lo, w_hi;	/* [lo, hi), dword aligned */
	uint32_t		w_wmask;
	uint32_t		w_keep;
};

/*
 * A claimed function.  The embedded uvm_object is the pager of the
 * memory BAR mappings and carries the reference count: one reference
 * for the open file, one per user mapping, one per DMA memory object
 * allocated through the claim (until its pages are freed or leaked).
 * The claim is released, and leaves pciuser_claims, when the last one
 * goes (see DESIGN.md, "lifetime"): while any of its DMA memory lives,
 * pci(4) may not write the function's config space and nobody may
 * claim it again, so nobody can turn bus mastering back on.
 */
struct pciuser_claimrec {
	struct uvm_object	c_uobj;		/* must be first */
	LIST_ENTRY(pciuser_claimrec) c_entry;	/* pciuser_claims */
	bool			c_registered;	/* on pciuser_claims */
	bool			c_attaching;	/* pciuser_match() takes it */
	bool			c_revoked;	/* no more faults */
	bool			c_gone;		/* bus detached: no access */
	device_t		c_dev;		/* its pciuser child, or NULL */
	struct pciuser_file	*c_pf;		/* the file holding it */
	struct pci_softc	*c_sc;
	pcitag_t		c_tag;
	int			c_device;
	int			c_function;
	struct pci_attach_args	c_pa;
	struct pciuser_barstate	c_bar[PCIUSER_MAXBARS];
	pcireg_t		c_savedcmd;	/* command register at claim */
	uint32_t		c_cfgsize;	/* 256 or 4096 */
	int			c_msioff;	/* 0 if none */
	int			c_msixoff;	/* 0 if none */
	bool			c_intxdis;	/* INTx disable works */
	int			c_ncfgw;
	struct pciuser_cfgw	c_cfgw[PCIUSER_CFGW_MAX];
};

/*
 * The pciuser autoconf child that owns a claimed function.  It holds a
 * reference on its claim from attach to detach.
 */
struct pciuser_softc {
	device_t		sc_dev;
	struct pciuser_claimrec	*sc_claim;
};

/* DMA memory: pager object + bus_dmamem(9) allocation. */
struct pciuser_dmamem {
	struct uvm_object	m_uobj;		/* must be first */
	LIST_ENTRY(pciuser_dmamem) m_entry;
	uint32_t		m_id;
	bus_dma_tag_t		m_dmat;
	bool			m_subtag;	/* m_dmat to be destroyed */
	bool			m_leaked;	/* device may still DMA */
	struct pciuser_file	*m_pf;		/* on its pf_orphans, or NULL */
	struct pciuser_claimrec	*m_claim;	/* its claim, referenced */
	bus_dma_segment_t	*m_segs;
	int			m_maxsegs;
	int			m_nsegs;
	bus_size_t		m_size;		/* bytes of memory */
	uint64_t		m_charge;	/* m_size + kernel metadata */
	void			*m_kva;
	int			m_mapflags;	/* for bus_dmamem_mmap */
	u_int			m_loads;	/* dmamaps loaded from it */
};

/* Kernel mirror of one of the process's bus_dmamaps. */
struct pciuser_dmamap {
	LIST_ENTRY(pciuser_dmamap) d_entry;
	uint32_t		d_id;
	bus_dma_tag_t		d_dmat;
	bool			d_subtag;
	bus_dmamap_t		d_map;
	uint32_t		d_nsegments;
	uint64_t		d_charge;	/* maxsize + metadata */
	struct pciuser_dmamem	*d_mem;		/* loaded from, or NULL */
};

struct pciuser_file;

/* The pciuser side of one pci(4) bus: its files and their references. */
struct pciuser_bus {
	LIST_ENTRY(pciuser_bus)	pb_entry;	/* pciuser_buses */
	struct pci_softc	*pb_sc;		/* NULL once detached */
	LIST_HEAD(, pciuser_file) pb_files;	/* not yet torn down */
	u_int			pb_nfiles;	/* open files, for freeing */
	int			pb_refcnt;	/* operations in progress */
	int			pb_closing;	/* closes tearing down */
	bool			pb_dying;
	kcondvar_t		pb_cv;
};

struct pciuser_vec {
	struct pciuser_file	*v_pf;
	u_int			v_index;
	void			*v_ih;
	uint32_t		v_pending;	/* since the last read */
	char			v_name[32];
};

struct pciuser_file {
	dev_t			pf_dev;
	struct pciuser_bus	*pf_bus;
	LIST_ENTRY(pciuser_file) pf_entry;	/* pb_files */
	bool			pf_detaching;	/* a detach tears it down */
	bool			pf_detached;	/* its claim is gone */
	int			pf_refcnt;	/* operations in progress */

	kmutex_t		pf_lock;
	kcondvar_t		pf_busycv;
	bool			pf_busy;	/* an ioctl or mmap runs */
	struct pciuser_claimrec	*pf_claim;

	/* Interrupts. */
	kmutex_t		pf_intr_lock;
	kcondvar_t		pf_cv;
	struct selinfo		pf_sel;
	bool			pf_dying;	/* bus detaching: wake up */
	void			*pf_sih;
	pci_intr_handle_t	*pf_ihps;
	struct pciuser_vec	*pf_vecs;
	int			pf_nvecs;
	uint32_t		pf_intrgen;	/* bumped by each teardown */
	pci_intr_type_t		pf_intrtype;
	bool			pf_intx_masked;
	struct pciuser_intr_ack	pf_ack;
	/* Where pf_ack's registers are, mapped by SETACK: ack, status. */
	bus_space_handle_t	pf_ack_h[2];
	bus_size_t		pf_ack_off[2];

	/* DMA. */
	LIST_HEAD(, pciuser_dmamem) pf_mems;
	LIST_HEAD(, pciuser_dmamap) pf_maps;
	LIST_HEAD(, pciuser_dmamem) pf_orphans;	/* freed, still mapped */
	uint64_t		pf_dma_bytes;	/* charged to this file */
	uint32_t		pf_nextmem;
	uint32_t		pf_nextmap;
};

static int	pciuser_read(struct file *, off_t *, struct uio *,
		    kauth_cred_t, int);
static int	pciuser_ioctl(struct file *, u_long, void *);
static int	pciuser_poll(struct file *, int);
static int	pciuser_stat(struct file *, struct stat *);
static int	pciuser_close(struct file *);
static int	pciuser_kqfilter(struct file *, struct knote *);
static int	pciuser_mmap(struct file *, off_t *, size_t, int, int *,
		    int *, struct uvm_object **, int *);
static void	pciuser_softintr(void *);
static void	pciuser_claim_revoke(struct pciuser_claimrec *);

static const struct fileops pciuser_fileops = {
#ifdef PCIUSER_NETBSD10
	.fo_name = "pciuser",
#endif
	.fo_read = pciuser_read,
	.fo_write = fbadop_write,
	.fo_ioctl = pciuser_ioctl,
	.fo_fcntl = fnullop_fcntl,
	.fo_poll = pciuser_poll,
	.fo_stat = pciuser_stat,
	.fo_close = pciuser_close,
	.fo_kqfilter = pciuser_kqfilter,
	.fo_restart = fnullop_restart,
	.fo_mmap = pciuser_mmap,
};

static void	pciuser_obj_reference(struct uvm_object *);
static void	pciuser_bar_detach(struct uvm_object *);
static int	pciuser_bar_fault(struct uvm_faultinfo *, vaddr_t,
		    struct vm_page **, int, int, vm_prot_t, int);
static void	pciuser_mem_detach(struct uvm_object *);
static int	pciuser_mem_fault(struct uvm_faultinfo *, vaddr_t,
		    struct vm_page **, int, int, vm_prot_t, int);

static const struct uvm_pagerops pciuser_bar_pagerops = {
	.pgo_reference = pciuser_obj_reference,
	.pgo_detach = pciuser_bar_detach,
	.pgo_fault = pciuser_bar_fault,
};

static const struct uvm_pagerops pciuser_mem_pagerops = {
	.pgo_reference = pciuser_obj_reference,
	.pgo_detach = pciuser_mem_detach,
	.pgo_fault = pciuser_mem_fault,
};

static kmutex_t pciuser_lock;
static LIST_HEAD(, pciuser_bus) pciuser_buses =
    LIST_HEAD_INITIALIZER(pciuser_buses);
static LIST_HEAD(, pciuser_claimrec) pciuser_claims =
    LIST_HEAD_INITIALIZER(pciuser_claims);
static ONCE_DECL(pciuser_once);

/*
 * DMA accounting, in bytes of wired memory: what every dmamem object
 * holds until it is freed, and the maxsize of every dmamap (bus_dma
 * may back a map with a bounce buffer that large).  The caps are set
 * with sysctl(8): hw.pciuser.dma_file_max, hw.pciuser.dma_total_max;
 * hw.pciuser.dma_total reads the global charge.
 */
static uint64_t pciuser_dma_total;
static uint64_t pciuser_dma_total_max;
static uint64_t pciuser_dma_file_max;

static int
pciuser_init(void)
{

	mutex_init(&pciuser_lock, MUTEX_DEFAULT, IPL_NONE);
	/* Defaults: an eighth of RAM per file, a quarter for all. */
	pciuser_dma_total_max = ctob((uint64_t)physmem) / 4;
	pciuser_dma_file_max = ctob((uint64_t)physmem) / 8;
	return 0;
}

/* Set a cap under the lock, so that readers of the pair see either. */
static int
pciuser_sysctl_cap(SYSCTLFN_ARGS)
{
	struct sysctlnode node = *rnode;
	uint64_t *cap = rnode->sysctl_data;
	uint64_t val;
	int error;

	mutex_enter(&pciuser_lock);
	val = *cap;
	mutex_exit(&pciuser_lock);
	node.sysctl_data = &val;
	error = sysctl_lookup(SYSCTLFN_CALL(&node));
	if (error || newp == NULL)
		return error;
	mutex_enter(&pciuser_lock);
	*cap = val;
	mutex_exit(&pciuser_lock);
	return 0;
}

SYSCTL_SETUP(sysctl_hw_pciuser_setup, "sysctl hw.pciuser subtree setup")
{
	static const struct {
		const char	*name;
		const char	*descr;
		uint64_t	*var;
		int		access;
	} nodes[] = {
		{ "dma_file_max",
		  "Bytes of DMA memory and maps one open file may hold",
		  &pciuser_dma_file_max, CTLFLAG_READWRITE },
		{ "dma_total_max",
		  "Bytes of DMA memory and maps all files may hold",
		  &pciuser_dma_total_max, CTLFLAG_READWRITE },
		{ "dma_total",
		  "Bytes of DMA memory and maps held now",
		  &pciuser_dma_total, CTLFLAG_READONLY },
	};
	const struct sysctlnode *node;
	size_t i;

	RUN_ONCE(&pciuser_once, pciuser_init);
	if (sysctl_createv(clog, 0, NULL, &node, CTLFLAG_PERMANENT,
	    CTLTYPE_NODE, "pciuser",
	    SYSCTL_DESCR("pci(4) user driver support"),
	    NULL, 0, NULL, 0, CTL_HW, CTL_CREATE, CTL_EOL) != 0)
		return;
	for (i = 0; i < __arraycount(nodes); i++)
		sysctl_createv(clog, 0, &node, NULL,
		    CTLFLAG_PERMANENT | nodes[i].access, CTLTYPE_QUAD,
		    nodes[i].name, SYSCTL_DESCR(nodes[i].descr),
		    pciuser_sysctl_cap, 0, (int64_t *)(void *)nodes[i].var, 0,
		    CTL_CREATE, CTL_EOL);
}

/*
 * Charge `bytes' to pf and to the global total, or fail with EDQUOT
 * if either cap would be passed.  Caps may be lowered below what is
 * held; then nothing more is granted until enough is freed.
 */
static int
pciuser_charge(struct pciuser_file *pf, uint64_t bytes)
{
	int error = 0;

	mutex_enter(&pciuser_lock);
	if (pf->pf_dma_bytes > pciuser_dma_file_max ||
	    bytes > pciuser_dma_file_max - pf->pf_dma_bytes ||
	    pciuser_dma_total > pciuser_dma_total_max ||
	    bytes > pciuser_dma_total_max - pciuser_dma_total)
		error = EDQUOT;
	else {
		pf->pf_dma_bytes += bytes;
		pciuser_dma_total += bytes;
	}
	mutex_exit(&pciuser_lock);
	return error;
}

/* Undo pciuser_charge. */
static void
pciuser_uncharge(struct pciuser_file *pf, uint64_t bytes)
{

	mutex_enter(&pciuser_lock);
	KASSERT(pf->pf_dma_bytes >= bytes && pciuser_dma_total >= bytes);
	pf->pf_dma_bytes -= bytes;
	pciuser_dma_total -= bytes;
	mutex_exit(&pciuser_lock);
}

/*
 * Memory that bus_dma may have lost: no longer the file's, but held in
 * the global total for good.
 */
static void
pciuser_charge_lost(struct pciuser_file *pf, uint64_t bytes)
{

	mutex_enter(&pciuser_lock);
	KASSERT(pf->pf_dma_bytes >= bytes);
	pf->pf_dma_bytes -= bytes;
	mutex_exit(&pciuser_lock);
	printf("pciuser: bus_dmamem_alloc failed with EFBIG; %ju bytes "
	    "counted as lost\n", (uintmax_t)bytes);
}

/*
 * Bus and file references (ugen.c 1.177's sc_refcnt and sc_dying): a
 * detach of the bus waits for the bus's, a detach of one claim's
 * pciuser child for its file's.
 */

/* Take a reference for one file operation; ENXIO once it is going. */
static int
pciuser_enter(struct pciuser_file *pf)
{
	struct pciuser_bus *pb = pf->pf_bus;
	int error = 0;

	mutex_enter(&pciuser_lock);
	if (pb->pb_dying || pf->pf_detaching || pf->pf_detached)
		error = ENXIO;
	else {
		KASSERT(pb->pb_refcnt < INT_MAX);
		pb->pb_refcnt++;
		pf->pf_refcnt++;
	}
	mutex_exit(&pciuser_lock);
	return error;
}

static void
pciuser_exit(struct pciuser_file *pf)
{
	struct pciuser_bus *pb = pf->pf_bus;

	mutex_enter(&pciuser_lock);
	KASSERT(pb->pb_refcnt > 0 && pf->pf_refcnt > 0);
	pf->pf_refcnt--;
	if ((--pb->pb_refcnt == 0 && pb->pb_dying) ||
	    (pf->pf_refcnt == 0 && pf->pf_detaching))
		cv_broadcast(&pb->pb_cv);
	mutex_exit(&pciuser_lock);
}

/*
 * Serialize ioctls and mmap of one file without holding a mutex across
 * their sleeps: wait interruptibly for pf_busy (uninterruptibly for
 * close and detach, which must not fail).
 */
static int
pciuser_busy(struct pciuser_file *pf, bool intr)
{
	int error = 0;

	mutex_enter(&pf->pf_lock);
	while (pf->pf_busy && error == 0) {
		if (intr)
			error = cv_wait_sig(&pf->pf_busycv, &pf->pf_lock);
		else
			cv_wait(&pf->pf_busycv, &pf->pf_lock);
	}
	if (error == 0)
		pf->pf_busy = true;
	mutex_exit(&pf->pf_lock);
	return error;
}

static void
pciuser_unbusy(struct pciuser_file *pf)
{

	mutex_enter(&pf->pf_lock);
	KASSERT(pf->pf_busy);
	pf->pf_busy = false;
	cv_broadcast(&pf->pf_busycv);
	mutex_exit(&pf->pf_lock);
}

/*
 * sc's bus record, made from *npbp on first use (then *npbp is set to
 * NULL: the caller frees what is left).  Called with pciuser_lock held.
 */
static struct pciuser_bus *
pciuser_bus_lookup(struct pci_softc *sc, struct pciuser_bus **npbp)
{
	struct pciuser_bus *pb;

	KASSERT(mutex_owned(&pciuser_lock));
	LIST_FOREACH(pb, &pciuser_buses, pb_entry) {
		if (pb->pb_sc == sc)
			return pb;
	}
	pb = *npbp;
	*npbp = NULL;
	pb->pb_sc = sc;
	LIST_INIT(&pb->pb_files);
	cv_init(&pb->pb_cv, "pciuserb");
	LIST_INSERT_HEAD(&pciuser_buses, pb, pb_entry);
	return pb;
}

/*
 * Put pf on the files of sc's bus record, made on first use; ENXIO if
 * the bus is going away.
 */
static int
pciuser_bus_join(struct pci_softc *sc, struct pciuser_file *pf)
{
	struct pciuser_bus *pb, *npb;
	int error = 0;

	npb = kmem_zalloc(sizeof(*npb), KM_SLEEP);
	mutex_enter(&pciuser_lock);
	pb = pciuser_bus_lookup(sc, &npb);
	if (pb->pb_dying)
		error = ENXIO;
	else {
		pb->pb_nfiles++;
		pf->pf_bus = pb;
		LIST_INSERT_HEAD(&pb->pb_files, pf, pf_entry);
	}
	mutex_exit(&pciuser_lock);
	if (npb != NULL)
		kmem_free(npb, sizeof(*npb));
	return error;
}

/*
 * Take pf off its bus.  The record goes with the last file of a
 * detached bus.
 */
static void
pciuser_bus_leave(struct pciuser_file *pf)
{
	struct pciuser_bus *pb = pf->pf_bus;
	bool free;

	mutex_enter(&pciuser_lock);
	if (!pf->pf_detached)
		LIST_REMOVE(pf, pf_entry);
	KASSERT(pb->pb_nfiles > 0);
	free = --pb->pb_nfiles == 0 && pb->pb_sc == NULL;
	mutex_exit(&pciuser_lock);
	if (free) {
		cv_destroy(&pb->pb_cv);
		kmem_free(pb, sizeof(*pb));
	}
}

static void
pciuser_file_free(struct pciuser_file *pf)
{

	seldestroy(&pf->pf_sel);
	cv_destroy(&pf->pf_cv);
	mutex_destroy(&pf->pf_intr_lock);
	cv_destroy(&pf->pf_busycv);
	mutex_destroy(&pf->pf_lock);
	kmem_free(pf, sizeof(*pf));
}

/*
 * pciuser_open:
 *
 *	d_open of /dev/pciN (called from pciopen()): clone the open
 *	into a file with its own state.  Opening needs no privilege
 *	beyond the node's permissions and takes only kernel memory
 *	for the file (bounded by the descriptor limit); claiming is
 *	the privileged act.
 */
int
pciuser_open(dev_t dev, int flags, int mode, struct lwp *l)
{
	struct pci_softc *sc;
	struct pciuser_file *pf;
	struct file *fp;
	int error, fd;

	RUN_ONCE(&pciuser_once, pciuser_init);
	pf = kmem_zalloc(sizeof(*pf), KM_SLEEP);
	pf->pf_dev = dev;
	mutex_init(&pf->pf_lock, MUTEX_DEFAULT, IPL_NONE);
	cv_init(&pf->pf_busycv, "pciusrbz");
	mutex_init(&pf->pf_intr_lock, MUTEX_DEFAULT, IPL_VM);
	cv_init(&pf->pf_cv, "pciuser");
	selinit(&pf->pf_sel);
	LIST_INIT(&pf->pf_mems);
	LIST_INIT(&pf->pf_maps);
	LIST_INIT(&pf->pf_orphans);
	pf->pf_nextmem = PCIUSER_DMAMEM_ID_MIN;
	pf->pf_nextmap = 1;

	/*
	 * d_open runs under the kernel lock, as autoconf does: sc
	 * cannot be freed before pciuser_bus_join() has it, and from
	 * then on pciuser_busdetach() knows about this file.
	 */
	sc = device_lookup_private(&pci_cd, minor(dev));
	error = sc == NULL ? ENXIO : pciuser_bus_join(sc, pf);
	if (error) {
		pciuser_file_free(pf);
		return error;
	}
	error = fd_allocfile(&fp, &fd);
	if (error) {
		pciuser_bus_leave(pf);
		pciuser_file_free(pf);
		return error;
	}
	return fd_clone(fp, fd, flags, &pciuser_fileops, pf);
}

/*
 * Pager objects.
 */

static void
pciuser_obj_reference(struct uvm_object *uobj)
{

	pciuser_obj_lock(uobj);
	uobj->uo_refs++;
	pciuser_obj_unlock(uobj);
}

/* Drops one reference to a pager object; true when it was the last. */
static bool
pciuser_obj_unref(struct uvm_object *uobj)
{
	int refs;

	pciuser_obj_lock(uobj);
	refs = --uobj->uo_refs;
	pciuser_obj_unlock(uobj);
	return refs == 0;
}

/* Take a claim off the registry: kernel drivers may attach again. */
static void
pciuser_claim_unregister(struct pciuser_claimrec *c)
{

	mutex_enter(&pciuser_lock);
	if (c->c_registered) {
		LIST_REMOVE(c, c_entry);
		c->c_registered = false;
	}
	mutex_exit(&pciuser_lock);
}

/* Bytes of piece p of a BAR's reservation (see pciuser_barstate). */
static bus_size_t
pciuser_piece_size(const struct pciuser_barstate *b, int p)
{

	return p == 0 ? b->b_gap_lo : b->b_size - b->b_gap_hi;
}

static int
pciuser_piece_reserve(struct pciuser_barstate *b, int p)
{
	bus_addr_t addr = b->b_base + (p == 0 ? 0 : b->b_gap_hi);
	int error;

#ifdef __HAVE_NEW_STYLE_BUS_H
	error = bus_space_reserve(b->b_tag, addr, pciuser_piece_size(b, p),
	    b->b_mapflags, &b->b_bsr[p]);
#else
	error = bus_space_map(b->b_tag, addr, pciuser_piece_size(b, p),
	    b->b_mapflags, &b->b_handle[p]);
	b->b_hmapped[p] = error == 0;
#endif
	b->b_reserved[p] = error == 0;
	return error;
}

static void
pciuser_bars_release(struct pciuser_claimrec *c)
{
	struct pciuser_barstate *b;
	int i, p;

	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		b = &c->c_bar[i];
		for (p = 0; p < 2; p++) {
#ifdef __HAVE_NEW_STYLE_BUS_H
			if (b->b_hmapped[p])
				bus_space_reservation_unmap(b->b_tag,
				    b->b_handle[p], pciuser_piece_size(b, p));
			if (b->b_reserved[p])
				bus_space_release(b->b_tag, &b->b_bsr[p]);
#else
			if (b->b_hmapped[p])
				bus_space_unmap(b->b_tag, b->b_handle[p],
				    pciuser_piece_size(b, p));
#endif
			b->b_hmapped[p] = b->b_reserved[p] = false;
		}
		b->b_mapped = false;
	}
}

/*
 * Stop pv tracking the BARs.  Under the object lock once the claim is
 * visible to pciuser_revoke(), which reads b_tracked under it.
 */
static void
pciuser_bars_untrack(struct pciuser_claimrec *c)
{
	struct pciuser_barstate *b;
	int i;

	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		b = &c->c_bar[i];
#ifdef __HAVE_PMAP_PV_TRACK
		if (b->b_tracked)
			pmap_pv_untrack((paddr_t)b->b_base, (psize_t)b->b_size);
#endif
		b->b_tracked = false;
	}
}

/*
 * The claim's child or its bus is going: no more faults on the claim's
 * BARs (c_revoked, set under the object lock that a fault holds, so no
 * fault enters a page after this one), and the pages already faulted in
 * are taken out of every process that maps them, where pv tracking
 * allows it (x86).  If the bus is going (gone), no config access either.
 */
static void
pciuser_revoke(struct pciuser_claimrec *c, bool gone)
{
#ifdef __HAVE_PMAP_PV_TRACK
	struct pciuser_barstate *b;
	bus_size_t off;
	int i;
#endif

	pciuser_obj_lock(&c->c_uobj);
	c->c_revoked = true;
	if (gone)
		c->c_gone = true;
#ifdef __HAVE_PMAP_PV_TRACK
	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		b = &c->c_bar[i];
		if (!b->b_tracked)
			continue;
		for (off = 0; off < b->b_size; off += PAGE_SIZE)
			pmap_pv_protect((paddr_t)(b->b_base + off),
			    VM_PROT_NONE);
	}
#endif
	pciuser_obj_unlock(&c->c_uobj);
}

/*
 * The last reference to a claim went (the file closed and the last BAR
 * mapping is gone): give the function back to the kernel as it was
 * found, except that bus mastering stays off -- a kernel driver turns
 * it on itself, and the device was programmed by a process.
 */
static void
pciuser_claim_free(struct pciuser_claimrec *c)
{
	bool gone;

	/*
	 * A forced detach may be revoking the pages right now (it finds
	 * the claim on pciuser_claims until it is unregistered below).
	 */
	pciuser_obj_lock(&c->c_uobj);
	gone = c->c_gone;
	pciuser_bars_untrack(c);
	pciuser_obj_unlock(&c->c_uobj);
	if (!gone)
		pci_conf_write(c->c_pa.pa_pc, c->c_tag, PCI_COMMAND_STATUS_REG,
		    c->c_savedcmd & ~PCI_COMMAND_MASTER_ENABLE);
	pciuser_bars_release(c);
	pciuser_claim_unregister(c);
	uvm_obj_destroy(&c->c_uobj, true);
	kmem_free(c, sizeof(*c));
}

/*
 * Drop one reference to a claim.  When only its pciuser child's is left
 * the claim is over: detach the child, whose own release frees the
 * claim.  A forced detach of the child by its bus takes c_dev too, under
 * pciuser_lock, so exactly one of them ends it; the kernel lock is held
 * from taking c_dev to config_detach(), as autoconf holds it across a
 * detach, so the device cannot go in between.
 */
static void
pciuser_claim_rele(struct pciuser_claimrec *c)
{
	device_t dev;
	int refs;

	pciuser_obj_lock(&c->c_uobj);
	refs = --c->c_uobj.uo_refs;
	pciuser_obj_unlock(&c->c_uobj);
	if (refs == 0) {
		pciuser_claim_free(c);
		return;
	}
	if (refs != 1)
		return;
	KERNEL_LOCK(1, NULL);
	mutex_enter(&pciuser_lock);
	dev = c->c_dev;
	c->c_dev = NULL;
	mutex_exit(&pciuser_lock);
	if (dev != NULL)
		(void)config_detach(dev, DETACH_FORCE);
	KERNEL_UNLOCK_ONE(NULL);
}

static void
pciuser_bar_detach(struct uvm_object *uobj)
{

	pciuser_claim_rele((struct pciuser_claimrec *)uobj);
}

static void
pciuser_mem_free(struct pciuser_dmamem *m)
{
	struct pciuser_claimrec *c = m->m_claim;
	pcireg_t csr;

	KASSERT(m->m_loads == 0);
	/*
	 * Defence in depth: the claim is still listed (this memory holds
	 * it), so only its own file can have turned bus mastering on,
	 * e.g. after DMAMEM_FREE and before the last munmap.  The device
	 * may then hold the pages' addresses: leak them, as
	 * pciuser_release() does, rather than give them to someone else.
	 * The command register is only read (no read-modify-write, so
	 * pf_intr_lock, which the file may no longer have, is not needed).
	 */
	if (!m->m_leaked && !c->c_gone) {
		csr = pci_conf_read(c->c_pa.pa_pc, c->c_tag,
		    PCI_COMMAND_STATUS_REG);
		if (csr & PCI_COMMAND_MASTER_ENABLE) {
			printf("pciuser: %d/%d/%d is bus mastering; its freed "
			    "DMA memory is leaked\n", c->c_pa.pa_bus,
			    c->c_device, c->c_function);
			m->m_leaked = true;
		}
	}
	mutex_enter(&pciuser_lock);
	if (m->m_pf != NULL) {
		LIST_REMOVE(m, m_entry);	/* pf_orphans */
		if (!m->m_leaked)
			m->m_pf->pf_dma_bytes -= m->m_charge;
		m->m_pf = NULL;
	}
	if (!m->m_leaked)
		pciuser_dma_total -= m->m_charge;
	mutex_exit(&pciuser_lock);
	if (m->m_leaked) {
		/* The device may still write it: never reuse the pages. */
		printf("pciuser: %zu bytes of DMA memory leaked\n",
		    (size_t)m->m_size);
	} else {
		bus_dmamem_unmap(m->m_dmat, m->m_kva, m->m_size);
		bus_dmamem_free(m->m_dmat, m->m_segs, m->m_nsegs);
		if (m->m_subtag)
			bus_dmatag_destroy(m->m_dmat);
		kmem_free(m->m_segs, m->m_maxsegs * sizeof(m->m_segs[0]));
	}
	uvm_obj_destroy(&m->m_uobj, true);
	kmem_free(m, sizeof(*m));
	/* The function may be given back once no DMA memory is left. */
	pciuser_claim_rele(c);
}

static void
pciuser_mem_detach(struct uvm_object *uobj)
{

	if (pciuser_obj_unref(uobj))
		pciuser_mem_free((struct pciuser_dmamem *)uobj);
}

/* Whether [off, off + len) meets a kernel-owned range of b. */
static bool
pciuser_bar_hole(const struct pciuser_barstate *b, uint64_t off,
    uint64_t len, bool pages)
{
	uint64_t lo, hi;
	int i;

	for (i = 0; i < 2; i++) {
		if (b->b_hole_size[i] == 0)
			continue;
		lo = b->b_hole_off[i];
		hi = lo + b->b_hole_size[i];
		if (pages) {
			lo = trunc_page(lo);
			hi = round_page(hi);
		}
		if (off < hi && lo < off + len)
			return true;
	}
	return false;
}

/* mmap cookie of one page of a memory BAR, or -1. */
static paddr_t
pciuser_bar_cookie(struct uvm_object *uobj, voff_t off, vm_prot_t prot)
{
	struct pciuser_claimrec *c = (struct pciuser_claimrec *)uobj;
	struct pciuser_barstate *b;
	uint64_t idx, rel;

	idx = (uint64_t)off >> PCIUSER_MMAP_SHIFT;
	rel = (uint64_t)off & PCIUSER_MMAP_MASK;
	if (c->c_revoked || idx < 1 || idx > PCIUSER_MAXBARS)
		return (paddr_t)-1;
	b = &c->c_bar[idx - 1];
	if ((b->b_uflags & PCIUSER_BAR_MMAP) == 0 || rel >= b->b_size ||
	    pciuser_bar_hole(b, rel, PAGE_SIZE, true))
		return (paddr_t)-1;
	return bus_space_mmap(b->b_tag, b->b_base, rel, prot,
	    b->b_mapflags & BUS_SPACE_MAP_PREFETCHABLE);
}

/* mmap cookie of one page of DMA memory, or -1. */
static paddr_t
pciuser_mem_cookie(struct uvm_object *uobj, voff_t off, vm_prot_t prot)
{
	struct pciuser_dmamem *m = (struct pciuser_dmamem *)uobj;
	uint64_t rel;

	rel = (uint64_t)off & PCIUSER_MMAP_MASK;
	if (rel >= m->m_size)
		return (paddr_t)-1;
	return bus_dmamem_mmap(m->m_dmat, m->m_segs, m->m_nsegs, rel, prot,
	    m->m_mapflags);
}

/*
 * Fault handler shared by both pagers, in the manner of udv_fault():
 * enter unmanaged mappings of the device or DMA pages directly.
 */
static int
pciuser_fault(struct uvm_faultinfo *ufi, vaddr_t vaddr, struct vm_page **pps,
    int npages, int centeridx, int flags,
    paddr_t (*cookie)(struct uvm_object *, voff_t, vm_prot_t))
{
	struct vm_map_entry *entry = ufi->entry;
	struct uvm_object *uobj = entry->object.uvm_obj;
	vm_prot_t mapprot;
	voff_t curr_offset;
	vaddr_t curr_va;
	paddr_t mdpgno;
	int lcv, error;

	/* Device and DMA memory is never copy-on-write. */
	if (UVM_ET_ISCOPYONWRITE(entry)) {
		uvmfault_unlockall(ufi, entry->aref.ar_amap, uobj);
		return EIO;
	}

	curr_offset = entry->offset + (vaddr - entry->start);
	curr_va = vaddr;
	mapprot = entry->protection;
	error = 0;
	for (lcv = 0; lcv < npages; lcv++, curr_offset += PAGE_SIZE,
	    curr_va += PAGE_SIZE) {
		if ((flags & PGO_ALLPAGES) == 0 && lcv != centeridx)
			continue;
		if (pps[lcv] == PGO_DONTCARE)
			continue;
		mdpgno = (*cookie)(uobj, curr_offset, mapprot);
		if (mdpgno == (paddr_t)-1) {
			error = EIO;
			break;
		}
		if (pmap_enter(ufi->orig_map->pmap, curr_va,
		    pmap_phys_address(mdpgno), mapprot,
		    PMAP_CANFAIL | mapprot | pmap_mmap_flags(mdpgno)) != 0) {
			pmap_update(ufi->orig_map->pmap);
			uvmfault_unlockall(ufi, entry->aref.ar_amap, uobj);
			uvm_wait("pciuflt");
			return ERESTART;
		}
	}
	pmap_update(ufi->orig_map->pmap);
	uvmfault_unlockall(ufi, entry->aref.ar_amap, uobj);
	return error;
}

static int
pciuser_bar_fault(struct uvm_faultinfo *ufi, vaddr_t vaddr,
    struct vm_page **pps, int npages, int centeridx, vm_prot_t access_type,
    int flags)
{

	return pciuser_fault(ufi, vaddr, pps, npages, centeridx, flags,
	    pciuser_bar_cookie);
}

static int
pciuser_mem_fault(struct uvm_faultinfo *ufi, vaddr_t vaddr,
    struct vm_page **pps, int npages, int centeridx, vm_prot_t access_type,
    int flags)
{

	return pciuser_fault(ufi, vaddr, pps, npages, centeridx, flags,
	    pciuser_mem_cookie);
}

/*
 * Claiming.
 */

/*
 * The pciuser autoconf child.  Its match wins only for the function a
 * claim is attaching (pciuser_claim_locked()), and then over any kernel
 * driver: the function has none (else the claim fails), and the process
 * asked for it.  Whatever attached it, a claim's own pci_probe_device()
 * or a rescan racing it, the child finds its claim the same way.
 */
#define	PCIUSER_MATCH_CLAIM	1000

static int	pciuser_match(device_t, cfdata_t, void *);
static void	pciuser_attach(device_t, device_t, void *);
static int	pciuser_detach(device_t, int);

CFATTACH_DECL_NEW(pciuser, sizeof(struct pciuser_softc),
    pciuser_match, pciuser_attach, pciuser_detach, NULL);

static struct pciuser_claimrec *
pciuser_attaching(device_t parent, const struct pci_attach_args *pa)
{
	struct pci_softc *psc = device_private(parent);
	struct pciuser_claimrec *c;

	KASSERT(mutex_owned(&pciuser_lock));
	LIST_FOREACH(c, &pciuser_claims, c_entry) {
		if (c->c_attaching && c->c_sc == psc &&
		    (u_int)c->c_device == pa->pa_device &&
		    (u_int)c->c_function == pa->pa_function)
			return c;
	}
	return NULL;
}

static int
pciuser_match(device_t parent, cfdata_t cf, void *aux)
{
	struct pciuser_claimrec *c;

	RUN_ONCE(&pciuser_once, pciuser_init);
	mutex_enter(&pciuser_lock);
	c = pciuser_attaching(parent, aux);
	mutex_exit(&pciuser_lock);
	return c != NULL ? PCIUSER_MATCH_CLAIM : 0;
}

static void
pciuser_attach(device_t parent, device_t self, void *aux)
{
	struct pciuser_softc *sc = device_private(self);
	const struct pci_attach_args *pa = aux;
	struct pciuser_claimrec *c;

	mutex_enter(&pciuser_lock);
	c = pciuser_attaching(parent, pa);
	KASSERT(c != NULL);
	c->c_attaching = false;
	c->c_dev = self;
	c->c_pa = *pa;
	mutex_exit(&pciuser_lock);
	pciuser_obj_reference(&c->c_uobj);
	sc->sc_dev = self;
	sc->sc_claim = c;
	aprint_naive("\n");
	aprint_normal(": claimed by a process\n");
}

/*
 * Detach of the child: the end of the claim (pciuser_claim_rele() took
 * c_dev), or its bus detaching it.  Not forced, that fails while the
 * claim lives; forced (the bus is going), the claim is revoked as a
 * forced detach of the bus revokes it: the file holding it is torn down
 * once its operations have drained, and the claim is forgotten.
 */
static int
pciuser_detach(device_t self, int flags)
{
	struct pciuser_softc *sc = device_private(self);
	struct pciuser_claimrec *c = sc->sc_claim;
	bool revoke;

	mutex_enter(&pciuser_lock);
	revoke = c->c_dev == self;
	if (revoke && (flags & DETACH_FORCE) == 0) {
		mutex_exit(&pciuser_lock);
		return EBUSY;
	}
	c->c_dev = NULL;
	if (revoke)
		pciuser_claim_revoke(c);
	mutex_exit(&pciuser_lock);
	pciuser_claim_rele(c);
	return 0;
}

/*
 * Whether a driver owns the function: attached (c_dev), or attaching.
 * config_attach() links a device before it calls its attach, which may
 * sleep and let the kernel lock go before pci(4) sets c_dev: the device
 * is already a child of the bus at the function's locators then.
 */
static bool
pciuser_function_owned(struct pci_softc *sc, int device, int function)
{
	deviter_t di;
	device_t dv;

	KASSERT(KERNEL_LOCKED_P());
	if (sc->PCI_SC_DEVICESC(device, function).c_dev != NULL)
		return true;
	for (dv = deviter_first(&di, 0); dv != NULL; dv = deviter_next(&di)) {
		if (device_parent(dv) == sc->sc_dev &&
		    device_locator(dv, PCICF_DEV) == device &&
		    device_locator(dv, PCICF_FUNCTION) == function)
			break;
	}
	deviter_release(&di);
	return dv != NULL;
}

/* Record the MSI-X table or PBA (cap register `reg') as a hole in its BAR. */
static void
pciuser_msix_hole(struct pciuser_claimrec *c, int reg, int hole,
    uint64_t size)
{
	pcireg_t v;
	u_int bir;

	v = pci_conf_read(c->c_pa.pa_pc, c->c_tag, c->c_msixoff + reg);
	bir = v & PCI_MSIX_TBLBIR_MASK;		/* same field for the PBA */
	if (bir >= PCIUSER_MAXBARS)
		return;
	c->c_bar[bir].b_hole_off[hole] = v & PCI_MSIX_TBLOFFSET_MASK;
	c->c_bar[bir].b_hole_size[hole] = size;
}

/*
 * Size the BARs.  The caller has registered the claim and turned
 * decoding off, so writing all-ones to a BAR moves nobody's registers.
 */
static void
pciuser_probe_bars(struct pciuser_claimrec *c)
{
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	struct pciuser_barstate *b;
	bus_addr_t base;
	bus_size_t size;
	pcireg_t type;
	int i, reg, flags;

	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		reg = PCI_MAPREG_START + 4 * i;
		b = &c->c_bar[i];
		if (!pci_mapreg_probe(pc, c->c_tag, reg, &type))
			continue;
		if (pci_mapreg_info(pc, c->c_tag, reg, type, &base, &size,
		    &flags) != 0 || size == 0)
			continue;
		b->b_base = base;
		b->b_size = size;
		b->b_mapflags = flags & BUS_SPACE_MAP_PREFETCHABLE;
		if (PCI_MAPREG_TYPE(type) == PCI_MAPREG_TYPE_IO) {
			b->b_uflags = PCIUSER_BAR_IO;
			b->b_tag = c->c_pa.pa_iot;
			if ((c->c_pa.pa_flags & PCI_FLAGS_IO_OKAY) == 0)
				b->b_size = 0;
		} else {
			b->b_tag = c->c_pa.pa_memt;
			if ((c->c_pa.pa_flags & PCI_FLAGS_MEM_OKAY) == 0)
				b->b_size = 0;
			if (flags & BUS_SPACE_MAP_PREFETCHABLE)
				b->b_uflags |= PCIUSER_BAR_PREFETCH;
			if (PCI_MAPREG_MEM_TYPE(type) ==
			    PCI_MAPREG_MEM_TYPE_64BIT) {
				b->b_uflags |= PCIUSER_BAR_MEM64;
				i++;	/* upper half of a 64-bit BAR */
			}
		}
		/* Firmware left it without an address: nothing decodes it. */
		if (base == 0)
			b->b_uflags |= PCIUSER_BAR_UNASSIGNED;
	}
}

/*
 * Reserve the BARs (bus_space_map(9) takes the range in the bus's
 * extent, so no other driver can map it while the claim lasts) and
 * decide which may be mmapped.  The MSI-X table is left out: when the
 * process establishes MSI-X, x86's msipic maps the table through the
 * same extent, and would fail on a range we hold (issue 24, N1).  The
 * table stays the kernel's all the same: pciuser_bar_hole() keeps PIO
 * and mmap off it.
 */
static int
pciuser_reserve_bars(struct pciuser_claimrec *c)
{
	struct pciuser_barstate *b;
	uint64_t lo, hi;
	int i, error;

	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		b = &c->c_bar[i];
		if (b->b_size == 0 || (b->b_uflags & PCIUSER_BAR_UNASSIGNED))
			continue;
		lo = hi = b->b_size;
		if (b->b_hole_size[0] != 0 && b->b_hole_off[0] < b->b_size) {
			lo = b->b_hole_off[0];
			hi = MIN(lo + b->b_hole_size[0], (uint64_t)b->b_size);
		}
		/* Both at most b_size, so they fit bus_size_t. */
		b->b_gap_lo = (bus_size_t)lo;
		b->b_gap_hi = (bus_size_t)hi;
		error = 0;
		if (b->b_gap_lo != 0)
			error = pciuser_piece_reserve(b, 0);
		if (error == 0 && b->b_gap_hi < b->b_size)
			error = pciuser_piece_reserve(b, 1);
		if (error) {
			/* Not visible to a detach: it waits for this ioctl. */
			pciuser_bars_untrack(c);
			pciuser_bars_release(c);
			return EBUSY;
		}
		b->b_mapped = true;
		b->b_uflags |= PCIUSER_BAR_VALID;
		/*
		 * Only whole pages can be mapped: a BAR that is smaller
		 * than a page or not page aligned may share its page with
		 * another device, so it is reachable only through PIO.
		 */
		if ((b->b_uflags & PCIUSER_BAR_IO) == 0 &&
		    (b->b_base & PAGE_MASK) == 0 &&
		    (b->b_size & PAGE_MASK) == 0 &&
		    (uint64_t)b->b_size <= PCIUSER_MMAP_MASK)
			b->b_uflags |= PCIUSER_BAR_MMAP;
#ifdef __HAVE_PMAP_PV_TRACK
		/*
		 * Unmanaged pages: only pages tracked before they are
		 * entered can be found in the pmaps again, to be revoked
		 * at a forced detach (pciuser_revoke()).
		 */
		if (b->b_uflags & PCIUSER_BAR_MMAP) {
			pmap_pv_track((paddr_t)b->b_base, (psize_t)b->b_size);
			b->b_tracked = true;
		}
#endif
	}
	return 0;
}

static void
pciuser_cfgw_add(struct pciuser_claimrec *c, uint32_t lo, uint32_t hi,
    uint32_t wmask, uint32_t keep)
{
	struct pciuser_cfgw *w;

	if (c->c_ncfgw >= PCIUSER_CFGW_MAX || lo >= hi || hi > c->c_cfgsize)
		return;		/* not allowlisted: writes get EPERM */
	w = &c->c_cfgw[c->c_ncfgw++];
	w->w_lo = lo;
	w->w_hi = hi;
	w->w_wmask = wmask;
	w->w_keep = keep;
}

/*
 * The config registers a process may write, and which of their bits.
 * Everything else (BARs, ROM BAR, interrupt line, MSI and MSI-X, power
 * state, FLR, MPS, SR-IOV, Resizable BAR, ...) belongs to the kernel.
 * See DESIGN.md, "config space".
 */
static void
pciuser_cfgw_setup(struct pciuser_claimrec *c)
{
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	pcireg_t v;
	int off, n;

	/* Command (I/O, memory, master, ...; INTx disable) + status RW1C. */
	pciuser_cfgw_add(c, PCI_COMMAND_STATUS_REG, PCI_COMMAND_STATUS_REG + 4,
	    0xf90007ffU, 0);
	/* Cache line size, latency timer. */
	pciuser_cfgw_add(c, PCI_BHLC_REG, PCI_BHLC_REG + 4, 0x0000ffffU, 0);
	/* PMCSR: PME enable and PME status; the power state is kept. */
	if (pci_get_capability(pc, c->c_tag, PCI_CAP_PWRMGMT, &off, NULL))
		pciuser_cfgw_add(c, off + PCI_PMCSR, off + PCI_PMCSR + 4,
		    0x00008100U, 0x00001e03U);
	if (pci_get_capability(pc, c->c_tag, PCI_CAP_PCIEXPRESS, &off, &v)) {
		/* Device control but FLR, MPS, phantom; status RW1C. */
		pciuser_cfgw_add(c, off + PCIE_DCSR, off + PCIE_DCSR + 4,
		    0x000f7d1fU, 0x000002e0U);
		/* Link control: ASPM, extended synch, clock PM. */
		pciuser_cfgw_add(c, off + PCIE_LCSR, off + PCIE_LCSR + 4,
		    0x00000183U, 0x00000e58U);
		/* Device control 2 but ARI and the port-only bits. */
		if (((v >> 16) & 0xf) >= 2)
			pciuser_cfgw_add(c, off + PCIE_DCSR2,
			    off + PCIE_DCSR2 + 4, 0x0000775fU, 0x000088a0U);
	}
	/* Vendor-specific capabilities: the device's own business. */
	v = pci_conf_read(pc, c->c_tag, PCI_COMMAND_STATUS_REG);
	if (v & PCI_STATUS_CAPLIST_SUPPORT) {
		off = PCI_CAPLIST_PTR(pci_conf_read(pc, c->c_tag,
		    PCI_CAPLISTPTR_REG)) & ~3;
		for (n = 0; off >= 0x40 && n < PCIUSER_CAPWALK_MAX; n++) {
			v = pci_conf_read(pc, c->c_tag, off);
			if (PCI_CAPLIST_CAP(v) == PCI_CAP_VENDSPEC)
				pciuser_cfgw_add(c, off + 4,
				    off + (((v >> 16) & 0xff) & ~3U),
				    0xffffffffU, 0);
			off = PCI_CAPLIST_NEXT(v) & ~3;
		}
	}
	/* AER: status (RW1C), masks, severity, ECRC control. */
	if (c->c_cfgsize == PCI_EXTCONF_SIZE) {
		off = PCI_EXTCAPLIST_BASE;
		for (n = 0; off >= PCI_EXTCAPLIST_BASE &&
		    n < PCIUSER_CAPWALK_MAX; n++) {
			v = pci_conf_read(pc, c->c_tag, off);
			if (v == 0 || v == 0xffffffffU)
				break;
			if (PCI_EXTCAPLIST_CAP(v) == PCI_EXTCAP_AER)
				pciuser_cfgw_add(c, off + 0x04, off + 0x1c,
				    0xffffffffU, 0);
			off = PCI_EXTCAPLIST_NEXT(v) & ~3;
		}
	}
}

/*
 * The config space that really is this function's.  x86 mode 1 ORs the
 * offset into the address, so an offset of 256 or more would reach
 * the next function: extended space is offered only to a PCI Express
 * function whose offset 0x100 answers with something that is neither
 * empty nor the ID register such an alias would show.
 */
static uint32_t
pciuser_cfgsize(struct pciuser_claimrec *c)
{
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	pcireg_t ext;

	if (!pci_get_capability(pc, c->c_tag, PCI_CAP_PCIEXPRESS, NULL, NULL))
		return PCI_CONF_SIZE;
	ext = pci_conf_read(pc, c->c_tag, PCI_EXTCAPLIST_BASE);
	if (ext == 0 || ext == 0xffffffffU ||
	    ext == pci_conf_read(pc, c->c_tag, PCI_ID_REG) ||
	    ext == pci_conf_read(pc, pci_make_tag(pc, c->c_pa.pa_bus,
	    c->c_device, c->c_function | 1), PCI_ID_REG))
		return PCI_CONF_SIZE;
	return PCI_EXTCONF_SIZE;
}

static void
pciuser_claim_report(struct pciuser_claimrec *c, struct pciuser_claim *uc)
{
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	struct pciuser_barstate *b;
	struct pciuser_bar *ub;
	int i;

	memset(uc->puc_bars, 0, sizeof(uc->puc_bars));
	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		b = &c->c_bar[i];
		ub = &uc->puc_bars[i];
		ub->pub_reg = PCI_MAPREG_START + 4 * i;
		ub->pub_flags = b->b_uflags;
		if (b->b_uflags == 0)
			continue;
		ub->pub_base = b->b_base;
		ub->pub_size = b->b_size;
		if (b->b_uflags & PCIUSER_BAR_MMAP)
			ub->pub_cookie = PCIUSER_MMAP_BAR(i);
		ub->pub_msix_table = b->b_hole_off[0];
		ub->pub_msix_table_size = b->b_hole_size[0];
		ub->pub_msix_pba = b->b_hole_off[1];
		ub->pub_msix_pba_size = b->b_hole_size[1];
	}
	uc->puc_version = PCIUSER_ABI_VERSION;
	uc->puc_id = c->c_pa.pa_id;
	uc->puc_class = c->c_pa.pa_class;
	uc->puc_subsys = pci_conf_read(pc, c->c_tag, PCI_SUBSYS_ID_REG);
	uc->puc_intrpin = c->c_pa.pa_intrpin;
	uc->puc_cfgsize = c->c_cfgsize;
	uc->puc_pad = 0;
	uc->puc_caps = 0;
	uc->puc_msi_count = 0;
	uc->puc_msix_count = 0;
	if (c->c_intxdis)
		uc->puc_caps |= PCIUSER_CAP_INTX_DISABLE;
	if (c->c_msioff != 0) {
		uc->puc_caps |= PCIUSER_CAP_MSI;
		uc->puc_msi_count = pci_msi_count(pc, c->c_tag);
	}
	if (c->c_msixoff != 0) {
		uc->puc_caps |= PCIUSER_CAP_MSIX;
		uc->puc_msix_count = pci_msix_count(pc, c->c_tag);
	}
	if (pci_dma64_available(&c->c_pa))
		uc->puc_caps |= PCIUSER_CAP_DMA64;
}

/*
 * Everything done to the function at claim time, in this order, under
 * the kernel lock (which serializes us against autoconfiguration):
 * check that nobody owns it and register the claim, and only then
 * touch its registers -- decoding off while the BARs are sized.
 */
static int
pciuser_claim_locked(struct pci_softc *sc, struct pciuser_claimrec *c)
{
	pci_chipset_tag_t pc = sc->sc_pc;
	struct pciuser_claimrec *oc;
	device_t dev;
	pcireg_t csr;
	int error;

	KASSERT(KERNEL_LOCKED_P());
	error = 0;
	if (pciuser_function_owned(sc, c->c_device, c->c_function))
		error = EBUSY;		/* a driver owns it */
	mutex_enter(&pciuser_lock);
	LIST_FOREACH(oc, &pciuser_claims, c_entry) {
		if (oc->c_sc == sc && oc->c_device == c->c_device &&
		    oc->c_function == c->c_function)
			error = EBUSY;	/* another open file owns it */
	}
	if (error == 0) {
		LIST_INSERT_HEAD(&pciuser_claims, c, c_entry);
		c->c_registered = true;
		c->c_attaching = true;
	}
	mutex_exit(&pciuser_lock);
	if (error)
		return error;

	/*
	 * Decoding off before pci_probe_device(), which sizes every BAR
	 * (writes all-ones to it) to collect the memory ranges: with
	 * decoding on, the BAR would move over someone's registers for
	 * that moment (issue 15, #3).
	 */
	csr = pci_conf_read(pc, c->c_tag, PCI_COMMAND_STATUS_REG);
	c->c_savedcmd = csr & PCIUSER_CSR_CMDMASK;
	pci_conf_write(pc, c->c_tag, PCI_COMMAND_STATUS_REG, c->c_savedcmd &
	    ~(PCI_COMMAND_IO_ENABLE | PCI_COMMAND_MEM_ENABLE |
	    PCI_COMMAND_MASTER_ENABLE));
	/*
	 * pci(4) attaches the pciuser child, whose match wins for this
	 * claim, and records it as the function's driver (c_dev).  No
	 * child: pciuser is not in the kernel's configuration.
	 */
	(void)pci_probe_device(sc, c->c_tag, NULL, NULL);
	mutex_enter(&pciuser_lock);
	c->c_attaching = false;
	dev = c->c_dev;
	mutex_exit(&pciuser_lock);
	if (dev == NULL) {
		error = ENXIO;
		goto restore;
	}
	pciuser_probe_bars(c);

	c->c_cfgsize = pciuser_cfgsize(c);
	if (!pci_get_capability(pc, c->c_tag, PCI_CAP_MSI, &c->c_msioff,
	    NULL))
		c->c_msioff = 0;
	if (pci_get_capability(pc, c->c_tag, PCI_CAP_MSIX, &c->c_msixoff,
	    &csr)) {
		pciuser_msix_hole(c, PCI_MSIX_TBLOFFSET, 0,
		    (uint64_t)PCI_MSIX_CTL_TBLSIZE(csr) *
		    PCI_MSIX_TABLE_ENTRY_SIZE);
		pciuser_msix_hole(c, PCI_MSIX_PBAOFFSET, 1,
		    (((uint64_t)PCI_MSIX_CTL_TBLSIZE(csr) + 63) / 64) * 8);
	} else
		c->c_msixoff = 0;
	pciuser_cfgw_setup(c);

	error = pciuser_reserve_bars(c);
	if (error)
		goto detach;

	/*
	 * pci(4) writes back the header it captured when it attached the
	 * child, with decoding off, when the child detaches: capture it
	 * again as the function is to be given back (decoding as found,
	 * bus mastering off; pciuser_claim_free() writes the same).
	 */
	csr = c->c_savedcmd & ~PCI_COMMAND_MASTER_ENABLE;
	pci_conf_write(pc, c->c_tag, PCI_COMMAND_STATUS_REG, csr);
	pci_conf_capture(pc, c->c_tag,
	    &sc->PCI_SC_DEVICESC(c->c_device, c->c_function).c_conf);

	/*
	 * Does the INTx disable bit (PCI 2.3) stick?  Leave INTx masked
	 * until the process establishes it; decoding back as it was,
	 * bus mastering off until the process turns it on.
	 */
	pci_conf_write(pc, c->c_tag, PCI_COMMAND_STATUS_REG,
	    csr | PCI_COMMAND_INTERRUPT_DISABLE);
	c->c_intxdis = (pci_conf_read(pc, c->c_tag, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_INTERRUPT_DISABLE) != 0;
	return 0;

detach:
	mutex_enter(&pciuser_lock);
	c->c_dev = NULL;
	mutex_exit(&pciuser_lock);
	(void)config_detach(dev, DETACH_FORCE);
restore:
	pci_conf_write(pc, c->c_tag, PCI_COMMAND_STATUS_REG, c->c_savedcmd);
	pciuser_claim_unregister(c);
	return error;
}

static int
pciuser_claim(struct pciuser_file *pf, struct file *fp,
    struct pciuser_claim *uc)
{
	struct pci_softc *sc = pf->pf_bus->pb_sc;
	pci_chipset_tag_t pc = sc->sc_pc;
	struct pciuser_claimrec *c;
	pcireg_t bhlcr;
	pcitag_t tag;
	int error;

	if ((fp->f_flag & (FREAD | FWRITE)) != (FREAD | FWRITE))
		return EBADF;
	if (uc->puc_flags != 0)
		return EINVAL;
	if ((int)uc->puc_bus != sc->sc_bus ||
	    uc->puc_device >= (uint32_t)sc->sc_maxndevs ||
	    uc->puc_function > 7)
		return EINVAL;
	if (pf->pf_claim != NULL)
		return EBUSY;

	/*
	 * A claimed function can be made to DMA anywhere the IOMMU (if
	 * any) lets it, so claiming is as strong as access to unmanaged
	 * memory.  Checked with the credentials of the caller, now: not
	 * those of whoever opened the node, and after a securelevel
	 * raise.  See DESIGN.md, "who may claim".
	 */
	error = kauth_authorize_machdep(kauth_cred_get(),
	    KAUTH_MACHDEP_UNMANAGEDMEM, NULL, NULL, NULL, NULL);
	if (error)
		return error;

	tag = pci_make_tag(pc, uc->puc_bus, uc->puc_device, uc->puc_function);
	if (uc->puc_function != 0) {
		bhlcr = pci_conf_read(pc,
		    pci_make_tag(pc, uc->puc_bus, uc->puc_device, 0),
		    PCI_BHLC_REG);
		if (!PCI_HDRTYPE_MULTIFN(bhlcr))
			return ENXIO;
	}
	if (PCI_VENDOR(pci_conf_read(pc, tag, PCI_ID_REG)) == 0xffff)
		return ENXIO;	/* nothing answers there */
	bhlcr = pci_conf_read(pc, tag, PCI_BHLC_REG);
	if (PCI_HDRTYPE_TYPE(bhlcr) != 0)
		return ENODEV;	/* bridges are not for userland */

	c = kmem_zalloc(sizeof(*c), KM_SLEEP);
	c->c_sc = sc;
	c->c_tag = tag;
	c->c_device = uc->puc_device;
	c->c_function = uc->puc_function;
	/* One reference for this open file; the child takes its own. */
	uvm_obj_init(&c->c_uobj, &pciuser_bar_pagerops, true, 1);
	KERNEL_LOCK(1, NULL);
	error = pciuser_claim_locked(sc, c);
	KERNEL_UNLOCK_ONE(NULL);
	if (error) {
		/* The file's reference is the last: the child has gone. */
		if (!pciuser_obj_unref(&c->c_uobj))
			panic("pciuser: claim failed with references left");
		uvm_obj_destroy(&c->c_uobj, true);
		kmem_free(c, sizeof(*c));
		return error;
	}

	pciuser_claim_report(c, uc);
	/* pciuser_lock too: pciuser_bus_claimed() looks at it. */
	mutex_enter(&pciuser_lock);
	mutex_enter(&pf->pf_lock);
	pf->pf_claim = c;
	mutex_exit(&pf->pf_lock);
	c->c_pf = pf;
	mutex_exit(&pciuser_lock);
	return 0;
}

/*
 * Register access.
 */

static int
pciuser_bar_check(struct pciuser_claimrec *c, uint32_t bar, uint32_t width,
    uint64_t off, struct pciuser_barstate **bp)
{
	struct pciuser_barstate *b;

	if (bar >= PCIUSER_MAXBARS)
		return EINVAL;
	b = &c->c_bar[bar];
	if ((b->b_uflags & PCIUSER_BAR_VALID) == 0)
		return ENXIO;	/* absent, unassigned or not decodable */
	KASSERT(b->b_mapped);
	switch (width) {
	case 1:
	case 2:
	case 4:
		break;
#ifdef _LP64
	case 8:
		if (b->b_uflags & PCIUSER_BAR_IO)
			return EINVAL;
		break;
#endif
	default:
		return EINVAL;
	}
	if ((off & (width - 1)) != 0 || off >= b->b_size ||
	    b->b_size - off < width)
		return EINVAL;
	if (pciuser_bar_hole(b, off, width, false))
		return EPERM;	/* MSI-X table or PBA: the kernel's */
	*bp = b;
	return 0;
}

/*
 * The handle of the piece that holds BAR offset off, and off within it,
 * the piece mapped into kernel VA now if it was only reserved.  The
 * access was checked by pciuser_bar_check(): it does not meet the
 * MSI-X table, so it lies wholly on one side of the gap.  The file is
 * busy (pf_busy), so no other PIO maps the same piece meanwhile.
 */
static int
pciuser_bar_handle(struct pciuser_barstate *b, bus_size_t *offp,
    bus_space_handle_t *hp)
{
	int p = 0;

	if (*offp >= b->b_gap_lo) {
		KASSERT(*offp >= b->b_gap_hi);
		*offp -= b->b_gap_hi;
		p = 1;
	}
	KASSERT(b->b_reserved[p]);
#ifdef __HAVE_NEW_STYLE_BUS_H
	if (!b->b_hmapped[p]) {
		int error;

		error = bus_space_reservation_map(b->b_tag, &b->b_bsr[p],
		    b->b_mapflags, &b->b_handle[p]);
		if (error)
			return error;
		b->b_hmapped[p] = true;
	}
#endif
	*hp = b->b_handle[p];
	return 0;
}

/* off was checked against the BAR by pciuser_bar_check(). */
static uint64_t
pciuser_bar_read(struct pciuser_barstate *b, bus_space_handle_t h,
    uint32_t width, bus_size_t off)
{

	switch (width) {
	case 1:
		return bus_space_read_1(b->b_tag, h, off);
	case 2:
		return bus_space_read_2(b->b_tag, h, off);
	case 4:
		return bus_space_read_4(b->b_tag, h, off);
#ifdef _LP64
	case 8:
		return bus_space_read_8(b->b_tag, h, off);
#endif
	}
	return ~(uint64_t)0;
}

static void
pciuser_bar_write(struct pciuser_barstate *b, bus_space_handle_t h,
    uint32_t width, bus_size_t off, uint64_t val)
{

	switch (width) {
	case 1:
		bus_space_write_1(b->b_tag, h, off, (uint8_t)val);
		break;
	case 2:
		bus_space_write_2(b->b_tag, h, off, (uint16_t)val);
		break;
	case 4:
		bus_space_write_4(b->b_tag, h, off, (uint32_t)val);
		break;
#ifdef _LP64
	case 8:
		bus_space_write_8(b->b_tag, h, off, val);
		break;
#endif
	}
}

static int
pciuser_pio(struct pciuser_claimrec *c, struct pciuser_pio *p, bool write)
{
	struct pciuser_barstate *b;
	bus_space_handle_t h;
	bus_size_t off;
	int error;

	error = pciuser_bar_check(c, p->pio_bar, p->pio_width,
	    p->pio_offset, &b);
	if (error)
		return error;
	/* Below b_size, so it fits bus_size_t (ILP32 too). */
	off = (bus_size_t)p->pio_offset;
	if ((error = pciuser_bar_handle(b, &off, &h)) != 0)
		return error;
	if (write)
		pciuser_bar_write(b, h, p->pio_width, off, p->pio_value);
	else
		p->pio_value = pciuser_bar_read(b, h, p->pio_width, off);
	return 0;
}

static const struct pciuser_cfgw *
pciuser_cfgw_find(const struct pciuser_claimrec *c, uint32_t reg)
{
	int i;

	for (i = 0; i < c->c_ncfgw; i++) {
		if (reg >= c->c_cfgw[i].w_lo && reg < c->c_cfgw[i].w_hi)
			return &c->c_cfgw[i];
	}
	return NULL;
}

static int
pciuser_cfg(struct pciuser_file *pf, struct pciuser_cfgreg *r, bool write)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	const struct pciuser_cfgw *w;
	uint32_t wmask, keep;
	pcireg_t val;

	if ((r->pcr_reg & 3) != 0 || r->pcr_reg >= c->c_cfgsize)
		return EINVAL;
	if (!write) {
		r->pcr_val = pci_conf_read(pc, c->c_tag, r->pcr_reg);
		return 0;
	}
	if ((w = pciuser_cfgw_find(c, r->pcr_reg)) == NULL)
		return EPERM;
	wmask = w->w_wmask;
	keep = w->w_keep;
	/*
	 * Under the interrupt lock: the handler read-modify-writes the
	 * command register, and owns its INTx disable bit while INTx is
	 * established.
	 */
	mutex_spin_enter(&pf->pf_intr_lock);
	if (r->pcr_reg == PCI_COMMAND_STATUS_REG && pf->pf_nvecs != 0 &&
	    pf->pf_intrtype == PCI_INTR_TYPE_INTX && c->c_intxdis) {
		wmask &= ~PCI_COMMAND_INTERRUPT_DISABLE;
		keep |= PCI_COMMAND_INTERRUPT_DISABLE;
	}
	val = r->pcr_val & wmask;
	if (keep != 0)
		val |= pci_conf_read(pc, c->c_tag, r->pcr_reg) & keep;
	pci_conf_write(pc, c->c_tag, r->pcr_reg, val);
	mutex_spin_exit(&pf->pf_intr_lock);
	return 0;
}

/*
 * Interrupts.
 */

static void
pciuser_intx_set(struct pciuser_file *pf, bool disable)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	pcireg_t csr;

	KASSERT(mutex_owned(&pf->pf_intr_lock));
	csr = pci_conf_read(pc, c->c_tag, PCI_COMMAND_STATUS_REG);
	csr &= PCIUSER_CSR_CMDMASK;	/* never write back RW1C status */
	if (disable)
		csr |= PCI_COMMAND_INTERRUPT_DISABLE;
	else
		csr &= ~PCI_COMMAND_INTERRUPT_DISABLE;
	pci_conf_write(pc, c->c_tag, PCI_COMMAND_STATUS_REG, csr);
}

static int
pciuser_intx_intr(void *arg)
{
	struct pciuser_vec *v = arg;
	struct pciuser_file *pf = v->v_pf;
	struct pciuser_claimrec *c = pf->pf_claim;
	const struct pciuser_intr_ack *ack = &pf->pf_ack;
	struct pciuser_barstate *b;
	pcireg_t csr;

	mutex_spin_enter(&pf->pf_intr_lock);
	if (ack->pia_flags & PCIUSER_ACK_ENABLE) {
		/* Declarative ack, validated by PCIUSER_IOC_INTR_SETACK. */
		b = &c->c_bar[ack->pia_bar];
		if ((ack->pia_flags & PCIUSER_ACK_STATUS) &&
		    (pciuser_bar_read(b, pf->pf_ack_h[1], ack->pia_width,
		    pf->pf_ack_off[1]) & ack->pia_status_mask) == 0) {
			mutex_spin_exit(&pf->pf_intr_lock);
			return 0;	/* shared line, not ours */
		}
		pciuser_bar_write(b, pf->pf_ack_h[0], ack->pia_width,
		    pf->pf_ack_off[0], ack->pia_value);
	} else {
		csr = pci_conf_read(c->c_pa.pa_pc, c->c_tag,
		    PCI_COMMAND_STATUS_REG);
		if ((csr & PCI_STATUS_INT_STATUS) == 0 ||
		    (csr & PCI_COMMAND_INTERRUPT_DISABLE) != 0) {
			mutex_spin_exit(&pf->pf_intr_lock);
			return 0;	/* shared line, not ours */
		}
		pciuser_intx_set(pf, true);
	}
	pf->pf_intx_masked = true;
	v->v_pending++;
	mutex_spin_exit(&pf->pf_intr_lock);
	softint_schedule(pf->pf_sih);
	return 1;
}

static int
pciuser_msi_intr(void *arg)
{
	struct pciuser_vec *v = arg;
	struct pciuser_file *pf = v->v_pf;

	mutex_spin_enter(&pf->pf_intr_lock);
	v->v_pending++;
	mutex_spin_exit(&pf->pf_intr_lock);
	softint_schedule(pf->pf_sih);
	return 1;
}

/* Wake readers, pollers and knotes: events, EOF or the bus going. */
static void
pciuser_wakeup(struct pciuser_file *pf)
{

	KASSERT(mutex_owned(&pf->pf_intr_lock));
	cv_broadcast(&pf->pf_cv);
	selnotify(&pf->pf_sel, POLLIN | POLLRDNORM, NOTE_SUBMIT);
}

static void
pciuser_softintr(void *arg)
{
	struct pciuser_file *pf = arg;

	mutex_spin_enter(&pf->pf_intr_lock);
	pciuser_wakeup(pf);
	mutex_spin_exit(&pf->pf_intr_lock);
}

static uint32_t
pciuser_pending(struct pciuser_file *pf)
{
	uint32_t n = 0;
	int i;

	KASSERT(mutex_owned(&pf->pf_intr_lock));
	for (i = 0; i < pf->pf_nvecs; i++)
		n += pf->pf_vecs[i].v_pending;
	return n;
}

/*
 * Release what pciuser_intr_establish() allocated: n handles (the
 * count pci_intr_alloc() returned), their vectors, the softint.
 * Readers, pollers and knotes then see end of file.
 */
static void
pciuser_intr_teardown(struct pciuser_file *pf)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	struct pciuser_vec *vecs;
	pci_intr_handle_t *ihps;
	void *sih;
	int i, n;

	KASSERT(pf->pf_busy);
	if (pf->pf_nvecs == 0)
		return;
	n = pf->pf_nvecs;
	vecs = pf->pf_vecs;
	ihps = pf->pf_ihps;
	sih = pf->pf_sih;

	/* Keep a level INTx from storming a shared line unhandled. */
	if (pf->pf_intrtype == PCI_INTR_TYPE_INTX && c->c_intxdis) {
		mutex_spin_enter(&pf->pf_intr_lock);
		pciuser_intx_set(pf, true);
		mutex_spin_exit(&pf->pf_intr_lock);
	}
	/* pci_intr_disestablish() waits for a running handler. */
	for (i = 0; i < n; i++) {
		if (vecs[i].v_ih != NULL)
			pci_intr_disestablish(pc, vecs[i].v_ih);
	}
	pci_intr_release(pc, ihps, n);
	/* No handler can schedule it now; this waits for a running one. */
	softint_disestablish(sih);

	mutex_spin_enter(&pf->pf_intr_lock);
	pf->pf_nvecs = 0;
	pf->pf_vecs = NULL;
	pf->pf_ihps = NULL;
	pf->pf_sih = NULL;
	pf->pf_intx_masked = false;
	pf->pf_intrgen++;
	pciuser_wakeup(pf);
	mutex_spin_exit(&pf->pf_intr_lock);
	kmem_free(vecs, n * sizeof(vecs[0]));
}

static int
pciuser_intr_establish(struct pciuser_file *pf, struct pciuser_intr_setup *is)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	struct pci_attach_args *pa = &c->c_pa;
	pci_chipset_tag_t pc = pa->pa_pc;
	int counts[PCI_INTR_TYPE_SIZE];
	int (*handler)(void *);
	pci_intr_handle_t *ihps;
	struct pciuser_vec *vecs, *v;
	pci_intr_type_t type;
	void *sih;
	int error, i, n;

	KASSERT(pf->pf_busy);
	if (pf->pf_nvecs != 0)
		return EBUSY;
	if (is->pis_flags != 0 || is->pis_count == 0 ||
	    is->pis_count > PCIUSER_MAXVECS)
		return EINVAL;
	switch (is->pis_type) {
	case PCIUSER_INTR_INTX:
		if (is->pis_count != 1)
			return EINVAL;
		if (pa->pa_intrpin == 0)
			return ENODEV;
		if (!c->c_intxdis &&
		    (pf->pf_ack.pia_flags & PCIUSER_ACK_ENABLE) == 0)
			return EOPNOTSUPP;	/* no way to mask it */
		type = PCI_INTR_TYPE_INTX;
		handler = pciuser_intx_intr;
		break;
	case PCIUSER_INTR_MSI:
		if (c->c_msioff == 0)
			return ENODEV;
		type = PCI_INTR_TYPE_MSI;
		handler = pciuser_msi_intr;
		break;
	case PCIUSER_INTR_MSIX:
		if (c->c_msixoff == 0)
			return ENODEV;
		type = PCI_INTR_TYPE_MSIX;
		handler = pciuser_msi_intr;
		break;
	default:
		return EINVAL;
	}

	/*
	 * The softint that wakes readers: one per file with interrupts,
	 * taken only by a claimed (so privileged) file and given back
	 * by the teardown.
	 */
	sih = softint_establish(SOFTINT_SERIAL | SOFTINT_MPSAFE,
	    pciuser_softintr, pf);
	if (sih == NULL)
		return ENOMEM;

	memset(counts, 0, sizeof(counts));
	counts[type] = is->pis_count;
	error = pci_intr_alloc(pa, &ihps, counts, type);
	if (error) {
		softint_disestablish(sih);
		return error;
	}
	n = counts[type];
	KASSERTMSG(n >= 1 && n <= (int)is->pis_count,
	    "pci_intr_alloc gave %d of %u vectors", n, is->pis_count);
	vecs = kmem_zalloc(n * sizeof(vecs[0]), KM_SLEEP);
	for (i = 0; i < n; i++) {
		v = &vecs[i];
		v->v_pf = pf;
		v->v_index = i;
		snprintf(v->v_name, sizeof(v->v_name), "pciuser%d.%d.%d/%d",
		    pa->pa_bus, c->c_device, c->c_function, i);
	}

	mutex_spin_enter(&pf->pf_intr_lock);
	if (type == PCI_INTR_TYPE_INTX && c->c_intxdis)
		pciuser_intx_set(pf, true);
	pf->pf_sih = sih;
	pf->pf_ihps = ihps;
	pf->pf_vecs = vecs;
	pf->pf_nvecs = n;
	pf->pf_intrtype = type;
	pf->pf_intx_masked = false;
	mutex_spin_exit(&pf->pf_intr_lock);

	for (i = 0; i < n; i++) {
		v = &vecs[i];
		pci_intr_setattr(pc, &ihps[i], PCI_INTR_MPSAFE, true);
		v->v_ih = pci_intr_establish_xname(pc, ihps[i], IPL_VM,
		    handler, v, v->v_name);
		if (v->v_ih == NULL) {
			/* Releases all n handles, the softint, vecs. */
			pciuser_intr_teardown(pf);
			return EIO;
		}
	}

	if (type == PCI_INTR_TYPE_INTX && c->c_intxdis) {
		mutex_spin_enter(&pf->pf_intr_lock);
		pciuser_intx_set(pf, false);
		mutex_spin_exit(&pf->pf_intr_lock);
	}
	is->pis_count = n;
	return 0;
}

static int
pciuser_intr_setack(struct pciuser_file *pf, const struct pciuser_intr_ack *a)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	struct pciuser_barstate *b;
	bus_space_handle_t h[2];
	bus_size_t off[2];
	int error;

	KASSERT(pf->pf_busy);
	if (pf->pf_nvecs != 0)
		return EBUSY;	/* the handler reads pf_ack unlocked */
	if ((a->pia_flags & ~(PCIUSER_ACK_ENABLE | PCIUSER_ACK_STATUS)) != 0)
		return EINVAL;
	if ((a->pia_flags & PCIUSER_ACK_ENABLE) == 0) {
		memset(&pf->pf_ack, 0, sizeof(pf->pf_ack));
		return 0;
	}
	if (a->pia_width == 8)
		return EINVAL;
	/*
	 * The handler runs in interrupt context, where nothing can be
	 * mapped: map the registers' pieces now.  Both offsets are below
	 * b_size, so they fit bus_size_t.
	 */
	error = pciuser_bar_check(c, a->pia_bar, a->pia_width,
	    a->pia_offset, &b);
	off[0] = (bus_size_t)a->pia_offset;
	if (error == 0)
		error = pciuser_bar_handle(b, &off[0], &h[0]);
	if (error)
		return error;
	off[1] = 0;
	h[1] = h[0];
	if (a->pia_flags & PCIUSER_ACK_STATUS) {
		error = pciuser_bar_check(c, a->pia_bar, a->pia_width,
		    a->pia_status_offset, &b);
		off[1] = (bus_size_t)a->pia_status_offset;
		if (error == 0)
			error = pciuser_bar_handle(b, &off[1], &h[1]);
		if (error)
			return error;
	}
	pf->pf_ack = *a;
	memcpy(pf->pf_ack_h, h, sizeof(h));
	memcpy(pf->pf_ack_off, off, sizeof(off));
	return 0;
}

static int
pciuser_intr_unmask(struct pciuser_file *pf,
    const struct pciuser_intr_unmask *u)
{
	struct pciuser_claimrec *c = pf->pf_claim;

	KASSERT(pf->pf_busy);
	if (pf->pf_nvecs == 0)
		return ENXIO;
	if (u->piu_vector >= (uint32_t)pf->pf_nvecs)
		return EINVAL;
	mutex_spin_enter(&pf->pf_intr_lock);
	if (pf->pf_intrtype == PCI_INTR_TYPE_INTX && pf->pf_intx_masked) {
		/*
		 * With the command register mask the kernel unmasks; with
		 * a declarative ack the process re-enables the source in
		 * the device's own registers before calling us.
		 */
		if (c->c_intxdis &&
		    (pf->pf_ack.pia_flags & PCIUSER_ACK_ENABLE) == 0)
			pciuser_intx_set(pf, false);
		pf->pf_intx_masked = false;
	}
	mutex_spin_exit(&pf->pf_intr_lock);
	return 0;
}

/*
 * DMA.
 */

static int
pciuser_dmatag(struct pciuser_claimrec *c, uint64_t maxaddr, uint32_t flags,
    bus_dma_tag_t *tagp, bool *subp)
{
	struct pci_attach_args *pa = &c->c_pa;
	bus_dma_tag_t dmat;
	uint64_t limit;
	int error;

	if ((flags & PCIUSER_DMA_64BIT) && pci_dma64_available(pa)) {
		dmat = pa->pa_dmat64;
		limit = MIN(~(uint64_t)0, (uint64_t)(bus_addr_t)~(bus_addr_t)0);
	} else {
		dmat = pa->pa_dmat;
		limit = 0xffffffffULL;
	}
	*subp = false;
	*tagp = dmat;
	if (maxaddr == 0 || maxaddr >= limit)
		return 0;
	if (maxaddr < 0xffffff)
		return EINVAL;	/* below 16MB is not worth supporting */
	error = bus_dmatag_subregion(dmat, 0, (bus_addr_t)maxaddr, tagp,
	    BUS_DMA_NOWAIT);
	if (error)
		return error;
	*subp = true;
	return 0;
}

/*
 * A boundary is 0 or a power of two of at least a page: bus_dma(9)
 * asserts that on x86 (a smaller one would panic the kernel).
 */
static bool
pciuser_boundary_ok(uint64_t boundary)
{

	return boundary == 0 ||
	    (powerof2(boundary) && boundary >= PAGE_SIZE &&
	    boundary <= PCIUSER_BUS_SIZE_MAX);
}

/* A size the mmap cookie layout and bus_size_t (ILP32) can both hold. */
static bool
pciuser_size_ok(uint64_t size)
{

	return size != 0 && size <= PCIUSER_MMAP_MASK &&
	    size <= PCIUSER_BUS_SIZE_MAX - PAGE_MASK;
}

static struct pciuser_dmamem *
pciuser_mem_lookup(struct pciuser_file *pf, uint32_t id)
{
	struct pciuser_dmamem *m;

	KASSERT(pf->pf_busy || mutex_owned(&pf->pf_lock));
	LIST_FOREACH(m, &pf->pf_mems, m_entry) {
		if (m->m_id == id)
			return m;
	}
	return NULL;
}

static struct pciuser_dmamap *
pciuser_map_lookup(struct pciuser_file *pf, uint32_t id)
{
	struct pciuser_dmamap *d;

	KASSERT(pf->pf_busy);
	LIST_FOREACH(d, &pf->pf_maps, d_entry) {
		if (d->d_id == id)
			return d;
	}
	return NULL;
}

static int
pciuser_dmamem_alloc(struct pciuser_file *pf, struct pciuser_dmamem_alloc *a)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	struct pciuser_dmamem *m;
	bus_size_t size, align;
	uint64_t pages, charge;
	int error, maxsegs, flags;

	KASSERT(pf->pf_busy);
	if (!pciuser_size_ok(a->pdm_size) ||
	    (a->pdm_flags & ~(PCIUSER_DMA_COHERENT | PCIUSER_DMA_64BIT |
	    PCIUSER_DMA_PREFETCH)) != 0)
		return EINVAL;
	if ((a->pdm_align != 0 && !powerof2(a->pdm_align)) ||
	    a->pdm_align > PCIUSER_BUS_SIZE_MAX ||
	    !pciuser_boundary_ok(a->pdm_boundary) ||
	    a->pdm_maxsegs > PCIUSER_DMA_MAXSEGS)
		return EINVAL;
	size = round_page((bus_size_t)a->pdm_size);
	/* Checked above: align and boundary fit bus_size_t (ILP32 too). */
	align = a->pdm_align < PAGE_SIZE ? PAGE_SIZE : (bus_size_t)a->pdm_align;
	pages = size / PAGE_SIZE;
	maxsegs = a->pdm_maxsegs;	/* <= PCIUSER_DMA_MAXSEGS */
	if (maxsegs == 0 || (uint64_t)maxsegs > pages)
		maxsegs = (int)MIN(pages, (uint64_t)PCIUSER_DMA_MAXSEGS);
	/*
	 * With a boundary below the size, x86 bus_dmamem_alloc takes one
	 * contiguous run (aligned to align) and splits it at each
	 * boundary; if that needs more than maxsegs segments it returns
	 * EFBIG without freeing the pages (issue 24, N4).  Refuse every
	 * request that could need more, so that the path is unreachable.
	 */
	if (a->pdm_boundary != 0 && a->pdm_boundary < size &&
	    (uint64_t)maxsegs < MIN(pages, howmany(size, a->pdm_boundary) +
	    (align < a->pdm_boundary ? 1 : 0)))
		return EINVAL;
	if (pf->pf_nextmem > PCIUSER_DMAMEM_ID_MAX)
		return ENOSPC;
	/* The pages, and the kernel memory that describes them. */
	charge = size + sizeof(*m) + (uint64_t)maxsegs * sizeof(m->m_segs[0]);
	error = pciuser_charge(pf, charge);
	if (error)
		return error;

	/* Small (maxsegs <= PCIUSER_DMA_MAXSEGS), so KM_SLEEP is short. */
	m = kmem_zalloc(sizeof(*m), KM_SLEEP);
	m->m_maxsegs = maxsegs;
	m->m_segs = kmem_zalloc(maxsegs * sizeof(m->m_segs[0]), KM_SLEEP);
	m->m_size = size;
	m->m_charge = charge;
	error = pciuser_dmatag(c, a->pdm_maxaddr, a->pdm_flags, &m->m_dmat,
	    &m->m_subtag);
	if (error)
		goto fail0;
	/* NOWAIT: never wait in the page allocator for a user's size. */
	error = bus_dmamem_alloc(m->m_dmat, size, align,
	    (bus_size_t)a->pdm_boundary,
	    m->m_segs, maxsegs, &m->m_nsegs, BUS_DMA_NOWAIT);
	if (error == EFBIG) {
		/*
		 * Not expected after the check above; but x86 may have
		 * lost the pages, so the charge is kept (moved from the
		 * file to the global total for good) rather than refunded:
		 * dma_total_max still bounds what can be lost.
		 */
		pciuser_charge_lost(pf, charge);
		charge = 0;
	}
	if (error)
		goto fail1;
	flags = BUS_DMA_NOWAIT;
	if (a->pdm_flags & PCIUSER_DMA_COHERENT)
		flags |= BUS_DMA_COHERENT;
	if (a->pdm_flags & PCIUSER_DMA_PREFETCH)
		flags |= BUS_DMA_PREFETCHABLE;
	error = bus_dmamem_map(m->m_dmat, m->m_segs, m->m_nsegs, size,
	    &m->m_kva, flags);
	if (error)
		goto fail2;
	/* Never hand out stale kernel data. */
	memset(m->m_kva, 0, size);
	m->m_mapflags = flags & (BUS_DMA_COHERENT | BUS_DMA_PREFETCHABLE);
	uvm_obj_init(&m->m_uobj, &pciuser_mem_pagerops, true, 1);
	/* The claim stays listed until this memory is gone. */
	m->m_claim = c;
	pciuser_obj_reference(&c->c_uobj);
	mutex_enter(&pf->pf_lock);
	m->m_id = pf->pf_nextmem++;
	LIST_INSERT_HEAD(&pf->pf_mems, m, m_entry);
	mutex_exit(&pf->pf_lock);

	a->pdm_id = m->m_id;
	a->pdm_nsegs = m->m_nsegs;
	a->pdm_cookie = (uint64_t)m->m_id << PCIUSER_MMAP_SHIFT;
	return 0;

fail2:	bus_dmamem_free(m->m_dmat, m->m_segs, m->m_nsegs);
fail1:	if (m->m_subtag)
		bus_dmatag_destroy(m->m_dmat);
fail0:	kmem_free(m->m_segs, maxsegs * sizeof(m->m_segs[0]));
	kmem_free(m, sizeof(*m));
	if (charge != 0)
		pciuser_uncharge(pf, charge);
	return error;
}

/*
 * Drop the file's reference; freed now or at the last munmap.  Until
 * the pages are freed they stay charged to the file (while it lives:
 * the orphan list lets pciuser_mem_free() find it) and to the total.
 */
static int
pciuser_dmamem_free(struct pciuser_file *pf, struct pciuser_dmamem *m)
{

	KASSERT(pf->pf_busy);
	if (m->m_loads != 0)
		return EBUSY;
	mutex_enter(&pf->pf_lock);
	LIST_REMOVE(m, m_entry);
	mutex_exit(&pf->pf_lock);
	mutex_enter(&pciuser_lock);
	m->m_pf = pf;
	LIST_INSERT_HEAD(&pf->pf_orphans, m, m_entry);
	mutex_exit(&pciuser_lock);
	pciuser_mem_detach(&m->m_uobj);
	return 0;
}

static int
pciuser_dmamap_create(struct pciuser_file *pf,
    struct pciuser_dmamap_create *a)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	struct pciuser_dmamap *d;
	bus_size_t maxsegsz;
	uint64_t charge;
	int error;

	KASSERT(pf->pf_busy);
	if (!pciuser_size_ok(a->pdc_maxsize) || a->pdc_maxsegsz == 0 ||
	    a->pdc_nsegments == 0 || a->pdc_nsegments > PCIUSER_DMA_MAXSEGS ||
	    !pciuser_boundary_ok(a->pdc_boundary) ||
	    (a->pdc_flags & ~PCIUSER_DMA_64BIT) != 0)
		return EINVAL;
	if (pf->pf_nextmap == 0)
		return ENOSPC;
	/* No segment is longer than the map: clamp before bus_size_t. */
	maxsegsz = (bus_size_t)MIN(a->pdc_maxsegsz, a->pdc_maxsize);
	/*
	 * The bounce buffer bus_dma may give the map, and the kernel memory
	 * that describes it: our mirror and the map's segment array, which
	 * can be far larger than a small map's pages.
	 */
	charge = round_page((uint64_t)a->pdc_maxsize) + sizeof(*d) +
	    (uint64_t)a->pdc_nsegments * sizeof(bus_dma_segment_t);
	error = pciuser_charge(pf, charge);
	if (error)
		return error;

	d = kmem_zalloc(sizeof(*d), KM_SLEEP);
	d->d_charge = charge;
	d->d_nsegments = a->pdc_nsegments;
	error = pciuser_dmatag(c, a->pdc_maxaddr, a->pdc_flags, &d->d_dmat,
	    &d->d_subtag);
	if (error)
		goto fail0;
	error = bus_dmamap_create(d->d_dmat, (bus_size_t)a->pdc_maxsize,
	    a->pdc_nsegments, maxsegsz, (bus_size_t)a->pdc_boundary,
	    BUS_DMA_NOWAIT, &d->d_map);
	if (error)
		goto fail1;
	d->d_id = pf->pf_nextmap++;
	LIST_INSERT_HEAD(&pf->pf_maps, d, d_entry);
	a->pdc_id = d->d_id;
	return 0;

fail1:	if (d->d_subtag)
		bus_dmatag_destroy(d->d_dmat);
fail0:	kmem_free(d, sizeof(*d));
	pciuser_uncharge(pf, charge);
	return error;
}

static void
pciuser_dmamap_unload(struct pciuser_dmamap *d)
{
	struct pciuser_dmamem *m = d->d_mem;

	if (m == NULL)
		return;
	bus_dmamap_unload(d->d_dmat, d->d_map);
	d->d_mem = NULL;
	m->m_loads--;
	pciuser_mem_detach(&m->m_uobj);
}

static void
pciuser_dmamap_destroy(struct pciuser_file *pf, struct pciuser_dmamap *d)
{

	pciuser_dmamap_unload(d);
	LIST_REMOVE(d, d_entry);
	bus_dmamap_destroy(d->d_dmat, d->d_map);
	if (d->d_subtag)
		bus_dmatag_destroy(d->d_dmat);
	pciuser_uncharge(pf, d->d_charge);
	kmem_free(d, sizeof(*d));
}

static int
pciuser_dmamap_load(struct pciuser_file *pf, struct pciuser_dmamap_load *a)
{
	struct pciuser_dma_seg *useg;
	struct pciuser_dmamap *d;
	struct pciuser_dmamem *m;
	int error, flags, i, nsegs;

	KASSERT(pf->pf_busy);
	if ((d = pciuser_map_lookup(pf, a->pdl_map)) == NULL ||
	    (m = pciuser_mem_lookup(pf, a->pdl_mem)) == NULL)
		return ENOENT;
	if (d->d_mem != NULL)
		return EBUSY;
	if (a->pdl_len == 0 || a->pdl_offset >= m->m_size ||
	    m->m_size - a->pdl_offset < a->pdl_len ||
	    (a->pdl_flags & ~(PCIUSER_LOAD_READ | PCIUSER_LOAD_WRITE)) != 0)
		return EINVAL;
	/*
	 * The array must hold as many segments as the map can have, so
	 * a load never succeeds in the kernel and fails for the user.
	 */
	if (a->pdl_maxsegs < d->d_nsegments)
		return EINVAL;
	/* A user address that does not fit a pointer (ILP32). */
	if (a->pdl_segs != (uint64_t)(uintptr_t)a->pdl_segs)
		return EFAULT;
	flags = BUS_DMA_NOWAIT;
	if (a->pdl_flags & PCIUSER_LOAD_READ)
		flags |= BUS_DMA_READ;
	if (a->pdl_flags & PCIUSER_LOAD_WRITE)
		flags |= BUS_DMA_WRITE;
	/*
	 * Load from the kernel mapping of the dmamem object: the map
	 * sees exactly the pages the process has mmapped, through the
	 * IOMMU where the platform's bus_dma has one.
	 */
	/* Both below m_size, so they fit size_t and bus_size_t. */
	error = bus_dmamap_load(d->d_dmat, d->d_map,
	    (char *)m->m_kva + (bus_size_t)a->pdl_offset,
	    (bus_size_t)a->pdl_len, NULL, flags);
	if (error)
		return error;
	nsegs = d->d_map->dm_nsegs;
	KASSERT(nsegs >= 1 && (uint32_t)nsegs <= d->d_nsegments);
	useg = kmem_alloc(nsegs * sizeof(useg[0]), KM_SLEEP);
	for (i = 0; i < nsegs; i++) {
		useg[i].ds_addr = d->d_map->dm_segs[i].ds_addr;
		useg[i].ds_len = d->d_map->dm_segs[i].ds_len;
	}
	error = copyout(useg, (void *)(uintptr_t)a->pdl_segs,
	    nsegs * sizeof(useg[0]));
	kmem_free(useg, nsegs * sizeof(useg[0]));
	if (error) {
		bus_dmamap_unload(d->d_dmat, d->d_map);
		return error;
	}
	a->pdl_nsegs = nsegs;
	pciuser_obj_reference(&m->m_uobj);
	m->m_loads++;
	d->d_mem = m;
	return 0;
}

static int
pciuser_dmamap_sync(struct pciuser_file *pf, struct pciuser_dmamap_sync *a)
{
	struct pciuser_dmamap *d;
	const uint32_t pre = PCIUSER_SYNC_PREREAD | PCIUSER_SYNC_PREWRITE;
	const uint32_t post = PCIUSER_SYNC_POSTREAD | PCIUSER_SYNC_POSTWRITE;

	KASSERT(pf->pf_busy);
	if ((d = pciuser_map_lookup(pf, a->pds_map)) == NULL)
		return ENOENT;
	if (d->d_mem == NULL)
		return EINVAL;
	/*
	 * PRE and POST together panic x86's bus_dmamap_sync (even
	 * without DIAGNOSTIC), and a zero length panics the ports that
	 * check the range (issue 24, N2): refuse both.
	 */
	if (a->pds_ops == 0 || (a->pds_ops & ~(pre | post)) != 0 ||
	    ((a->pds_ops & pre) != 0 && (a->pds_ops & post) != 0) ||
	    a->pds_len == 0 || a->pds_offset >= d->d_map->dm_mapsize ||
	    d->d_map->dm_mapsize - a->pds_offset < a->pds_len)
		return EINVAL;
	/* Both below dm_mapsize, so they fit bus_addr_t and bus_size_t. */
	bus_dmamap_sync(d->d_dmat, d->d_map, (bus_addr_t)a->pds_offset,
	    (bus_size_t)a->pds_len, a->pds_ops);
	return 0;
}

/*
 * Whether the function may be mastering the bus.  Nothing confines
 * its DMA on x86 (no IOMMU is used), so memory is not given back to
 * the kernel while bus master enable is on: DMAMEM_FREE waits for the
 * process to turn it off (close and detach turn it off themselves).
 */
static bool
pciuser_mastering(struct pciuser_file *pf)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	pcireg_t csr;

	mutex_spin_enter(&pf->pf_intr_lock);
	csr = pci_conf_read(c->c_pa.pa_pc, c->c_tag, PCI_COMMAND_STATUS_REG);
	mutex_spin_exit(&pf->pf_intr_lock);
	return (csr & PCI_COMMAND_MASTER_ENABLE) != 0;
}

/*
 * fileops.
 */

static int
pciuser_ioctl_claimed(struct pciuser_file *pf, u_long cmd, void *data)
{
	struct pciuser_dma_id *di = data;
	struct pciuser_dmamem *m;
	struct pciuser_dmamap *d;

	switch (cmd) {
	case PCIUSER_IOC_CFGREAD:
		return pciuser_cfg(pf, data, false);
	case PCIUSER_IOC_CFGWRITE:
		return pciuser_cfg(pf, data, true);
	case PCIUSER_IOC_PIO_READ:
		return pciuser_pio(pf->pf_claim, data, false);
	case PCIUSER_IOC_PIO_WRITE:
		return pciuser_pio(pf->pf_claim, data, true);
	case PCIUSER_IOC_INTR_ESTABLISH:
		return pciuser_intr_establish(pf, data);
	case PCIUSER_IOC_INTR_DISESTABLISH:
		pciuser_intr_teardown(pf);
		return 0;
	case PCIUSER_IOC_INTR_SETACK:
		return pciuser_intr_setack(pf, data);
	case PCIUSER_IOC_INTR_UNMASK:
		return pciuser_intr_unmask(pf, data);
	case PCIUSER_IOC_DMAMEM_ALLOC:
		return pciuser_dmamem_alloc(pf, data);
	case PCIUSER_IOC_DMAMEM_FREE:
		if ((m = pciuser_mem_lookup(pf, di->pdi_id)) == NULL)
			return ENOENT;
		if (pciuser_mastering(pf))
			return EBUSY;
		return pciuser_dmamem_free(pf, m);
	case PCIUSER_IOC_DMAMAP_CREATE:
		return pciuser_dmamap_create(pf, data);
	case PCIUSER_IOC_DMAMAP_DESTROY:
	case PCIUSER_IOC_DMAMAP_UNLOAD:
		if ((d = pciuser_map_lookup(pf, di->pdi_id)) == NULL)
			return ENOENT;
		if (cmd == PCIUSER_IOC_DMAMAP_DESTROY)
			pciuser_dmamap_destroy(pf, d);
		else
			pciuser_dmamap_unload(d);
		return 0;
	case PCIUSER_IOC_DMAMAP_LOAD:
		return pciuser_dmamap_load(pf, data);
	case PCIUSER_IOC_DMAMAP_SYNC:
		return pciuser_dmamap_sync(pf, data);
	default:
		return ENOTTY;
	}
}

/*
 * Which of pci(4)'s own ioctls a file may pass on (issue 24, N3).  A
 * claimed file may be handed to a less privileged process, and
 * PCI_IOC_BDF_CFGWRITE writes any register of any function on any bus,
 * which would undo the config allowlist: a claimed file passes only
 * the ioctls that read.  An unclaimed file keeps pci(4)'s behaviour
 * (the node's permissions decide), except that it may not write the
 * config space of a function a process has claimed.
 */
static int
pciuser_pci_ioctl_ok(struct pciuser_file *pf, u_long cmd, void *data)
{
	struct pciio_bdf_cfgreg *bdfr = data;
	struct pciuser_claimrec *c;
	int error = 0;

	KASSERT(pf->pf_busy);
	if (pf->pf_claim != NULL) {
		switch (cmd) {
		case PCI_IOC_CFGREAD:
		case PCI_IOC_BDF_CFGREAD:
		case PCI_IOC_BUSINFO:
#ifdef PCI_IOC_DRVNAME
		case PCI_IOC_DRVNAME:
#endif
#ifdef PCI_IOC_DRVNAMEONBUS
		case PCI_IOC_DRVNAMEONBUS:
#endif
			return 0;
		default:
			return EPERM;
		}
	}
	if (cmd != PCI_IOC_BDF_CFGWRITE)
		return 0;
	mutex_enter(&pciuser_lock);
	/* c_sc, c_device, c_function are set before a claim is listed. */
	LIST_FOREACH(c, &pciuser_claims, c_entry) {
		if ((u_int)c->c_sc->sc_bus == bdfr->bus &&
		    (u_int)c->c_device == bdfr->device &&
		    (u_int)c->c_function == bdfr->function)
			error = EBUSY;
	}
	mutex_exit(&pciuser_lock);
	return error;
}

static int
pciuser_ioctl(struct file *fp, u_long cmd, void *data)
{
	struct pciuser_file *pf = fp->f_data;
	int error;

	switch (cmd) {
	case FIONBIO:
		return 0;	/* FNONBLOCK is consulted by read */
	case FIOASYNC:
		return *(int *)data ? EOPNOTSUPP : 0;
	}
	if ((error = pciuser_enter(pf)) != 0)
		return error;
	/* Busy for pci(4)'s ioctls too: pf_claim cannot change under us. */
	if ((error = pciuser_busy(pf, true)) != 0)
		goto out;
	if (IOCGROUP(cmd) != 'P' || (cmd & 0xff) < 64) {
		/*
		 * The pci(4) ioctls of pci_usrreq.c, through cdev_ioctl()
		 * so that they run as pci_cdevsw asks (under the kernel
		 * lock: it is not D_MPSAFE), if pciuser_pci_ioctl_ok()
		 * lets them.
		 */
		error = pciuser_pci_ioctl_ok(pf, cmd, data);
		if (error == 0)
			error = cdev_ioctl(pf->pf_dev, cmd, data, fp->f_flag,
			    curlwp);
	} else if (cmd == PCIUSER_IOC_CLAIM)
		error = pciuser_claim(pf, fp, data);
	else if (pf->pf_claim == NULL)
		error = ENXIO;
	else
		error = pciuser_ioctl_claimed(pf, cmd, data);
	pciuser_unbusy(pf);
out:
	pciuser_exit(pf);
	return error;
}

/*
 * read(2): one pciuser_intr_event per vector that fired since the last
 * read.  End of file when no interrupts are established, ENXIO once
 * the bus is detaching.
 */
static int
pciuser_read(struct file *fp, off_t *offp, struct uio *uio, kauth_cred_t cred,
    int flags)
{
	struct pciuser_file *pf = fp->f_data;
	struct pciuser_intr_event ev[PCIUSER_MAXVECS];
	size_t max, n, i;
	uint32_t gen;
	int error;

	if (uio->uio_resid < (ssize_t)sizeof(ev[0]))
		return EINVAL;
	if ((error = pciuser_enter(pf)) != 0)
		return error;
	max = MIN((size_t)uio->uio_resid / sizeof(ev[0]), __arraycount(ev));

	n = 0;
	mutex_spin_enter(&pf->pf_intr_lock);
	for (;;) {
		if (pf->pf_dying) {
			error = ENXIO;
			goto out;
		}
		if (pf->pf_nvecs == 0)
			goto out;	/* no interrupts: end of file */
		if (pciuser_pending(pf) != 0)
			break;
		if (fp->f_flag & FNONBLOCK) {
			error = EWOULDBLOCK;
			goto out;
		}
		error = cv_wait_sig(&pf->pf_cv, &pf->pf_intr_lock);
		if (error)
			goto out;
	}
	gen = pf->pf_intrgen;
	for (i = 0; i < (size_t)pf->pf_nvecs && n < max; i++) {
		if (pf->pf_vecs[i].v_pending == 0)
			continue;
		ev[n].pie_vector = (uint32_t)i;	/* < PCIUSER_MAXVECS */
		ev[n].pie_count = pf->pf_vecs[i].v_pending;
		pf->pf_vecs[i].v_pending = 0;
		n++;
	}
	mutex_spin_exit(&pf->pf_intr_lock);

	error = uiomove(ev, n * sizeof(ev[0]), uio);
	if (error) {
		/* Nothing is lost: the counts go back, unless torn down. */
		mutex_spin_enter(&pf->pf_intr_lock);
		if (pf->pf_intrgen == gen) {
			for (i = 0; i < n; i++)
				pf->pf_vecs[ev[i].pie_vector].v_pending +=
				    ev[i].pie_count;
		}
		mutex_spin_exit(&pf->pf_intr_lock);
	}
	pciuser_exit(pf);
	return error;
out:
	mutex_spin_exit(&pf->pf_intr_lock);
	pciuser_exit(pf);
	return error;
}

/*
 * poll(2): POLLIN with pending events; POLLIN | POLLHUP at end of file
 * (nothing established, or torn down) so that a poller wakes and its
 * read sees it; POLLHUP | POLLERR once the bus is detaching.
 */
static int
pciuser_poll(struct file *fp, int events)
{
	struct pciuser_file *pf = fp->f_data;
	const int rd = events & (POLLIN | POLLRDNORM);
	int revents = 0;

	if (pciuser_enter(pf) != 0)
		return POLLHUP | POLLERR | rd;
	mutex_spin_enter(&pf->pf_intr_lock);
	if (pf->pf_dying)
		revents = POLLHUP | POLLERR | rd;
	else if (pf->pf_nvecs == 0)
		revents = POLLHUP | rd;
	else if (pciuser_pending(pf) != 0)
		revents = rd;
	else if (rd != 0)
		selrecord(curlwp, &pf->pf_sel);
	mutex_spin_exit(&pf->pf_intr_lock);
	pciuser_exit(pf);
	return revents;
}

static void
filt_pciuser_detach(struct knote *kn)
{
	struct pciuser_file *pf = kn->kn_hook;

	mutex_spin_enter(&pf->pf_intr_lock);
#ifdef PCIUSER_NETBSD10
	selremove_knote(&pf->pf_sel, kn);
#else
	SLIST_REMOVE(&pf->pf_sel.sel_klist, kn, knote, kn_selnext);
#endif
	mutex_spin_exit(&pf->pf_intr_lock);
}

/* EVFILT_READ: the pending count; EV_EOF as read(2) would see it. */
static int
filt_pciuser_read(struct knote *kn, long hint)
{
	struct pciuser_file *pf = kn->kn_hook;
	int rv;

	if (hint != NOTE_SUBMIT)
		mutex_spin_enter(&pf->pf_intr_lock);
	if (pf->pf_dying || pf->pf_nvecs == 0) {
		kn->kn_data = 0;
#ifdef PCIUSER_NETBSD10
		knote_set_eof(kn, 0);
#else
		kn->kn_flags |= EV_EOF;
#endif
		rv = 1;
	} else {
		kn->kn_data = pciuser_pending(pf);
		rv = kn->kn_data > 0;
	}
	if (hint != NOTE_SUBMIT)
		mutex_spin_exit(&pf->pf_intr_lock);
	return rv;
}

static const struct filterops pciuser_read_filtops = {
#ifdef PCIUSER_NETBSD10
	.f_flags = FILTEROP_ISFD | FILTEROP_MPSAFE,
#else
	.f_isfd = 1,
#endif
	.f_attach = NULL,
	.f_detach = filt_pciuser_detach,
	.f_event = filt_pciuser_read,
};

static int
pciuser_kqfilter(struct file *fp, struct knote *kn)
{
	struct pciuser_file *pf = fp->f_data;
	int error;

	if (kn->kn_filter != EVFILT_READ)
		return EINVAL;
	if ((error = pciuser_enter(pf)) != 0)
		return error;
	kn->kn_fop = &pciuser_read_filtops;
	kn->kn_hook = pf;
	mutex_spin_enter(&pf->pf_intr_lock);
#ifdef PCIUSER_NETBSD10
	selrecord_knote(&pf->pf_sel, kn);
#else
	SLIST_INSERT_HEAD(&pf->pf_sel.sel_klist, kn, kn_selnext);
#endif
	mutex_spin_exit(&pf->pf_intr_lock);
	pciuser_exit(pf);
	return 0;
}

static int
pciuser_stat(struct file *fp, struct stat *st)
{
	struct pciuser_file *pf = fp->f_data;

	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFCHR | S_IRUSR | S_IWUSR;
	st->st_rdev = pf->pf_dev;
	st->st_uid = kauth_cred_geteuid(fp->f_cred);
	st->st_gid = kauth_cred_getegid(fp->f_cred);
	return 0;
}

static int
pciuser_mmap(struct file *fp, off_t *offp, size_t size, int prot,
    int *flagsp, int *advicep, struct uvm_object **uobjp, int *maxprotp)
{
	struct pciuser_file *pf = fp->f_data;
	struct pciuser_claimrec *c;
	struct pciuser_barstate *b;
	struct pciuser_dmamem *m;
	struct uvm_object *uobj;
	uint64_t idx, rel;
	int maxprot, error;

	maxprot = 0;
	if (fp->f_flag & FREAD)
		maxprot |= VM_PROT_READ;
	if (fp->f_flag & FWRITE)
		maxprot |= VM_PROT_WRITE;
	if ((prot & ~maxprot) != 0)
		return EACCES;
	if (*offp < 0 || size == 0)
		return EINVAL;
	if ((error = pciuser_enter(pf)) != 0)
		return error;

	mutex_enter(&pf->pf_lock);
	c = pf->pf_claim;
	if (c == NULL) {
		/*
		 * Unclaimed: pci_usrreq.c's pcimmap(), as before, and
		 * as vn_mmap() did for the device node: MAP_PRIVATE (or
		 * neither) becomes MAP_SHARED, which programs rely on.
		 */
		mutex_exit(&pf->pf_lock);
		*flagsp = (*flagsp & ~MAP_PRIVATE) | MAP_SHARED;
		uobj = udv_attach(pf->pf_dev, maxprot, *offp, size);
		pciuser_exit(pf);
		if (uobj == NULL)
			return EINVAL;
		*uobjp = uobj;
		*advicep = UVM_ADV_RANDOM;
		*maxprotp = maxprot;
		return 0;
	}

	idx = (uint64_t)*offp >> PCIUSER_MMAP_SHIFT;
	rel = (uint64_t)*offp & PCIUSER_MMAP_MASK;
	uobj = NULL;
	error = EINVAL;
	if ((*flagsp & MAP_SHARED) == 0)
		;	/* BARs and DMA memory are never private */
	else if (idx >= 1 && idx <= PCIUSER_MAXBARS) {
		b = &c->c_bar[idx - 1];
		if ((b->b_uflags & PCIUSER_BAR_MMAP) == 0 ||
		    rel >= b->b_size || b->b_size - rel < size)
			error = EINVAL;
		else if (pciuser_bar_hole(b, rel, size, true))
			error = EPERM;	/* MSI-X table or PBA */
		else
			uobj = &c->c_uobj;
	} else if (idx >= PCIUSER_DMAMEM_ID_MIN &&
	    (m = pciuser_mem_lookup(pf, (uint32_t)idx)) != NULL) {
		if (rel < m->m_size && m->m_size - rel >= size)
			uobj = &m->m_uobj;
	}
	if (uobj != NULL) {
		/* The mapping's reference, dropped by pgo_detach. */
		pciuser_obj_reference(uobj);
		*uobjp = uobj;
		*advicep = UVM_ADV_RANDOM;
		*maxprotp = maxprot;
		error = 0;
	}
	mutex_exit(&pf->pf_lock);
	pciuser_exit(pf);
	return error;
}

/*
 * Tear a claimed file down in an order that is safe against a device
 * that is still running: stop DMA (and check that it stopped), stop
 * interrupts, unload the maps, then let go of the memory and the
 * claim.  Used by the last close and by the detach of the bus; the
 * caller holds pf_busy.
 */
static void
pciuser_release(struct pciuser_file *pf)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	pci_chipset_tag_t pc;
	struct pciuser_dmamap *d;
	struct pciuser_dmamem *m;
	pcireg_t csr;
	bool stopped;

	KASSERT(pf->pf_busy);
	if (c == NULL)
		return;
	pc = c->c_pa.pa_pc;

	/*
	 * 1. No new DMA: clear bus master enable under the lock the
	 *    interrupt handler's read-modify-write takes, and read it
	 *    back.  A function that does not let go (or has vanished
	 *    and reads all-ones) may still write its DMA memory, which
	 *    is then leaked rather than given to someone else.
	 */
	mutex_spin_enter(&pf->pf_intr_lock);
	csr = pci_conf_read(pc, c->c_tag, PCI_COMMAND_STATUS_REG);
	pci_conf_write(pc, c->c_tag, PCI_COMMAND_STATUS_REG,
	    (csr & PCIUSER_CSR_CMDMASK) & ~PCI_COMMAND_MASTER_ENABLE);
	csr = pci_conf_read(pc, c->c_tag, PCI_COMMAND_STATUS_REG);
	mutex_spin_exit(&pf->pf_intr_lock);
	stopped = (csr & PCI_COMMAND_MASTER_ENABLE) == 0;
	if (!stopped)
		printf("pciuser: %d/%d/%d keeps bus mastering on; "
		    "its DMA memory is leaked\n", c->c_pa.pa_bus,
		    c->c_device, c->c_function);

	/* 2. Interrupts off (INTx masked, MSI released, softint gone). */
	pciuser_intr_teardown(pf);

	/*
	 * 3. Unload and destroy the maps (IOMMU entries go), or, if the
	 *    device may still be mastering, keep them loaded forever.
	 * 4. DMA memory: freed now, or at its last munmap.
	 */
	if (stopped) {
		while ((d = LIST_FIRST(&pf->pf_maps)) != NULL)
			pciuser_dmamap_destroy(pf, d);
	} else {
		LIST_FOREACH(m, &pf->pf_mems, m_entry)
			m->m_leaked = true;
		mutex_enter(&pciuser_lock);
		LIST_FOREACH(m, &pf->pf_orphans, m_entry)
			m->m_leaked = true;
		mutex_exit(&pciuser_lock);
		LIST_INIT(&pf->pf_maps);	/* their memory stays wired */
	}
	while ((m = LIST_FIRST(&pf->pf_mems)) != NULL) {
		m->m_loads = 0;		/* leaked maps keep their reference */
		(void)pciuser_dmamem_free(pf, m);
	}

	/* 5. The claim: released now, or at the last BAR munmap. */
	mutex_enter(&pciuser_lock);
	mutex_enter(&pf->pf_lock);
	pf->pf_claim = NULL;
	mutex_exit(&pf->pf_lock);
	c->c_pf = NULL;
	mutex_exit(&pciuser_lock);
	pciuser_claim_rele(c);
}

static int
pciuser_close(struct file *fp)
{
	struct pciuser_file *pf = fp->f_data;
	struct pciuser_bus *pb = pf->pf_bus;
	struct pciuser_dmamem *m;
	bool teardown;

	/*
	 * No other operation on this file can be running (the file has
	 * no references left), but the bus may be detaching: wait for a
	 * detach that is tearing this file down, or keep one off it.
	 */
	mutex_enter(&pciuser_lock);
	while (pf->pf_detaching)
		cv_wait(&pb->pb_cv, &pciuser_lock);
	teardown = !pf->pf_detached;
	if (teardown) {
		LIST_REMOVE(pf, pf_entry);
		pf->pf_detached = true;
		pb->pb_closing++;
	}
	mutex_exit(&pciuser_lock);

	if (teardown) {
		(void)pciuser_busy(pf, false);
		pciuser_release(pf);
		pciuser_unbusy(pf);
		mutex_enter(&pciuser_lock);
		if (--pb->pb_closing == 0)
			cv_broadcast(&pb->pb_cv);
		mutex_exit(&pciuser_lock);
	}

	/* Memory freed but still mapped forgets this file's account. */
	mutex_enter(&pciuser_lock);
	while ((m = LIST_FIRST(&pf->pf_orphans)) != NULL) {
		LIST_REMOVE(m, m_entry);
		m->m_pf = NULL;
	}
	mutex_exit(&pciuser_lock);

	pciuser_bus_leave(pf);
	pciuser_file_free(pf);
	fp->f_data = NULL;
	return 0;
}

/*
 * Whether a claim holds the bus: a file's, or one that outlives its file
 * in BAR mappings (a non-forced detach must not pull those pages away
 * from a process; issue 24).
 */
static bool
pciuser_bus_claimed(struct pciuser_bus *pb)
{
	struct pciuser_claimrec *c;
	struct pciuser_file *pf;

	KASSERT(mutex_owned(&pciuser_lock));
	LIST_FOREACH(pf, &pb->pb_files, pf_entry) {
		if (pf->pf_claim != NULL)
			return true;
	}
	LIST_FOREACH(c, &pciuser_claims, c_entry) {
		if (c->c_sc == pb->pb_sc)
			return true;
	}
	return false;
}

/* Start (or call off) a detach: operations fail, sleepers wake. */
static void
pciuser_bus_dying(struct pciuser_bus *pb, bool dying)
{
	struct pciuser_file *pf;

	KASSERT(mutex_owned(&pciuser_lock));
	pb->pb_dying = dying;
	LIST_FOREACH(pf, &pb->pb_files, pf_entry) {
		mutex_spin_enter(&pf->pf_intr_lock);
		pf->pf_dying = dying;
		pciuser_wakeup(pf);
		mutex_spin_exit(&pf->pf_intr_lock);
	}
}

/*
 * Tear down a file taken off its bus's list, as its close would, once
 * its operations have drained; it stays open and sees ENXIO.  Called
 * with pciuser_lock held, which is let go meanwhile.  Close waits for
 * this (pf_detaching) rather than racing it.
 */
static void
pciuser_file_detach(struct pciuser_file *pf)
{
	struct pciuser_bus *pb = pf->pf_bus;

	KASSERT(mutex_owned(&pciuser_lock));
	pf->pf_detaching = true;
	mutex_spin_enter(&pf->pf_intr_lock);
	pf->pf_dying = true;
	pciuser_wakeup(pf);
	mutex_spin_exit(&pf->pf_intr_lock);
	while (pf->pf_refcnt > 0)
		cv_wait(&pb->pb_cv, &pciuser_lock);
	mutex_exit(&pciuser_lock);
	(void)pciuser_busy(pf, false);
	pciuser_release(pf);
	pciuser_unbusy(pf);
	mutex_enter(&pciuser_lock);
	pf->pf_detaching = false;
	pf->pf_detached = true;
	cv_broadcast(&pb->pb_cv);
}

/*
 * Forget a claim whose bus is going: no registry entry keyed by a softc
 * about to be freed, no config access at its final release, faults
 * fail, pages faulted in are revoked.  Under pciuser_lock: a claim
 * whose last munmap runs meanwhile is not freed before it is
 * unregistered.
 */
static void
pciuser_claim_forget(struct pciuser_claimrec *c)
{

	KASSERT(mutex_owned(&pciuser_lock));
	if (c->c_registered) {
		LIST_REMOVE(c, c_entry);
		c->c_registered = false;
	}
	pciuser_revoke(c, true);
}

/*
 * A forced detach of a claim's pciuser child: the same path as a forced
 * detach of the bus, for this claim only.  A file that a close or a
 * detach of the bus is already tearing down is left to them.  The bus
 * stays, so the claim stays listed until its last reference: while its
 * DMA memory lives, nobody may claim the function or turn its bus
 * mastering back on through pci(4) (found by the fuzzer,
 * regressions/child-detach-then-bdf-cfgwrite).
 */
static void
pciuser_claim_revoke(struct pciuser_claimrec *c)
{
	struct pciuser_file *pf = c->c_pf;

	KASSERT(mutex_owned(&pciuser_lock));
	if (pf != NULL && !pf->pf_detaching && !pf->pf_detached) {
		LIST_REMOVE(pf, pf_entry);
		pciuser_file_detach(pf);
	}
	pciuser_revoke(c, false);
}

/*
 * pciuser_busdetach:
 *
 *	Hook for pcidetach(), before its children: the pci bus sc is
 *	going away.  Without DETACH_FORCE, refuse while a claim lives,
 *	before any child is detached.  Otherwise, as ugen_detach() does:
 *	no new operations, wake the sleeping ones, wait until none is
 *	left, then tear down every file; the files stay open and see
 *	ENXIO until they are closed.  The claims' pciuser children are
 *	detached by pcidetach() afterwards, like its other children.
 */
int
pciuser_busdetach(struct pci_softc *sc, int flags)
{
	struct pciuser_claimrec *c, *nc;
	struct pciuser_bus *pb, *npb;
	struct pciuser_file *pf;

	RUN_ONCE(&pciuser_once, pciuser_init);
	npb = kmem_zalloc(sizeof(*npb), KM_SLEEP);
	mutex_enter(&pciuser_lock);
	/*
	 * No file yet: a record all the same, so that it can be dying
	 * until pciuser_busdetach_done().
	 */
	pb = pciuser_bus_lookup(sc, &npb);
	if (npb != NULL) {
		mutex_exit(&pciuser_lock);
		kmem_free(npb, sizeof(*npb));
		mutex_enter(&pciuser_lock);
	}
	if ((flags & DETACH_FORCE) == 0 && pciuser_bus_claimed(pb)) {
		mutex_exit(&pciuser_lock);
		return EBUSY;
	}
	pciuser_bus_dying(pb, true);
	while (pb->pb_refcnt > 0)
		cv_wait(&pb->pb_cv, &pciuser_lock);
	/* A claim made while we waited: not forced, so back off. */
	if ((flags & DETACH_FORCE) == 0 && pciuser_bus_claimed(pb)) {
		pciuser_bus_dying(pb, false);
		mutex_exit(&pciuser_lock);
		return EBUSY;
	}

	/* Only closes can run now; they stay off files taken here. */
	while ((pf = LIST_FIRST(&pb->pb_files)) != NULL) {
		LIST_REMOVE(pf, pf_entry);
		pciuser_file_detach(pf);
	}
	while (pb->pb_closing > 0)
		cv_wait(&pb->pb_cv, &pciuser_lock);

	/* Claims that outlive their file (mappings, DMA memory). */
	LIST_FOREACH_SAFE(c, &pciuser_claims, c_entry, nc) {
		if (c->c_sc == sc)
			pciuser_claim_forget(c);
	}
	/*
	 * The record stays on pciuser_buses, dying, until
	 * pciuser_busdetach_done(): pcidetach() goes on to detach the
	 * children and may sleep, and an open in that window must see
	 * ENXIO rather than make a new record for a bus that is going
	 * (ugen.c's sc_dying, which stays set).
	 */
	mutex_exit(&pciuser_lock);
	return 0;
}

/*
 * pciuser_busdetach_done:
 *
 *	Hook for pcidetach(), after its children are detached (or
 *	failed to): forget the record pciuser_busdetach() left dying.  If
 *	the bus stays (a child refused), later opens make a new record;
 *	the files open before stay detached and see ENXIO.  The record
 *	goes with its last file.
 */
void
pciuser_busdetach_done(struct pci_softc *sc)
{
	struct pciuser_bus *pb;
	bool free;

	RUN_ONCE(&pciuser_once, pciuser_init);
	mutex_enter(&pciuser_lock);
	LIST_FOREACH(pb, &pciuser_buses, pb_entry) {
		if (pb->pb_sc == sc && pb->pb_dying)
			break;
	}
	if (pb == NULL) {
		mutex_exit(&pciuser_lock);
		return;
	}
	LIST_REMOVE(pb, pb_entry);
	pb->pb_sc = NULL;
	free = pb->pb_nfiles == 0;
	mutex_exit(&pciuser_lock);
	if (free) {
		cv_destroy(&pb->pb_cv);
		kmem_free(pb, sizeof(*pb));
	}
}
