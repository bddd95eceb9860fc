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
 * one open file and are torn down by its last close.  Unclaimed files
 * behave like the old /dev/pciN: unknown ioctls and mmap go to
 * pci_usrreq.c.
 *
 * Locking:
 *	pciuser_claims_lock	(adaptive) registry of claimed functions
 *	pf_lock			(adaptive) everything in a pciuser_file
 *				changed by ioctls; held across sleeps
 *	pf_intr_lock		(spin, IPL_VM) interrupt counters, the
 *				INTx mask state, the command register
 *				read-modify-write, klist
 *	c_uobj.vmobjlock,
 *	m_uobj.vmobjlock	reference counts of the pager objects
 * Lock order: pf_lock -> pciuser_claims_lock, pf_lock -> pf_intr_lock.
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
#include <sys/systm.h>
#include <sys/uio.h>

#include <uvm/uvm.h>
#include <uvm/uvm_device.h>

#include <dev/pci/pcireg.h>
#include <dev/pci/pcivar.h>
#include <dev/pci/pciio.h>
#include <dev/pci/pciuserio.h>

extern const struct cdevsw pci_cdevsw;

#define	PCIUSER_MMAP_MASK	(((uint64_t)1 << PCIUSER_MMAP_SHIFT) - 1)
#define	PCIUSER_MSI_CAPLEN	24	/* largest MSI capability */
#define	PCIUSER_MSIX_CAPLEN	12
#define	PCIUSER_CSR_CMDMASK	0x0000ffffU	/* command half of the CSR */

struct pciuser_barstate {
	bus_addr_t		b_base;
	bus_size_t		b_size;
	int			b_mapflags;	/* BUS_SPACE_MAP_* */
	uint32_t		b_uflags;	/* PCIUSER_BAR_* */
	int			b_reg;
	bus_space_tag_t		b_tag;
	bus_space_handle_t	b_handle;
	bool			b_mapped;	/* b_handle valid */
};

/*
 * A claimed function.  The embedded uvm_object is the pager of the
 * memory BAR mappings and carries the reference count: one reference
 * for the open file, one per user mapping.  The claim is released
 * when the last one goes (see DESIGN.md, "lifetime").
 */
struct pciuser_claimrec {
	struct uvm_object	c_uobj;		/* must be first */
	LIST_ENTRY(pciuser_claimrec) c_entry;
	struct pci_softc	*c_sc;
	pcitag_t		c_tag;
	int			c_bus;
	int			c_device;
	int			c_function;
	struct pci_attach_args	c_pa;
	struct pciuser_barstate	c_bar[PCIUSER_MAXBARS];
	int			c_msioff;	/* 0 if none */
	int			c_msixoff;	/* 0 if none */
	bool			c_intxdis;	/* INTx disable works */
};

/* DMA memory: pager object + bus_dmamem(9) allocation. */
struct pciuser_dmamem {
	struct uvm_object	m_uobj;		/* must be first */
	LIST_ENTRY(pciuser_dmamem) m_entry;
	uint32_t		m_id;
	bus_dma_tag_t		m_dmat;
	bool			m_subtag;	/* m_dmat to be destroyed */
	bus_dma_segment_t	*m_segs;
	int			m_maxsegs;
	int			m_nsegs;
	bus_size_t		m_size;
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
	struct pciuser_dmamem	*d_mem;		/* loaded from, or NULL */
};

struct pciuser_file;

struct pciuser_vec {
	struct pciuser_file	*v_pf;
	u_int			v_index;
	void			*v_ih;
	uint32_t		v_pending;	/* since the last read */
	char			v_name[32];
};

struct pciuser_file {
	dev_t			pf_dev;
	struct pci_softc	*pf_sc;
	kmutex_t		pf_lock;
	struct pciuser_claimrec	*pf_claim;

	/* Interrupts. */
	kmutex_t		pf_intr_lock;
	kcondvar_t		pf_cv;
	struct selinfo		pf_sel;
	void			*pf_sih;
	pci_intr_handle_t	*pf_ihps;
	struct pciuser_vec	*pf_vecs;
	int			pf_nvecs;
	pci_intr_type_t		pf_intrtype;
	bool			pf_intx_masked;
	struct pciuser_intr_ack	pf_ack;

	/* DMA. */
	LIST_HEAD(, pciuser_dmamem) pf_mems;
	LIST_HEAD(, pciuser_dmamap) pf_maps;
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

static const struct fileops pciuser_fileops = {
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

static void	pciuser_bar_reference(struct uvm_object *);
static void	pciuser_bar_detach(struct uvm_object *);
static int	pciuser_bar_fault(struct uvm_faultinfo *, vaddr_t,
		    struct vm_page **, int, int, vm_prot_t, int);
static void	pciuser_mem_reference(struct uvm_object *);
static void	pciuser_mem_detach(struct uvm_object *);
static int	pciuser_mem_fault(struct uvm_faultinfo *, vaddr_t,
		    struct vm_page **, int, int, vm_prot_t, int);

static const struct uvm_pagerops pciuser_bar_pagerops = {
	.pgo_reference = pciuser_bar_reference,
	.pgo_detach = pciuser_bar_detach,
	.pgo_fault = pciuser_bar_fault,
};

static const struct uvm_pagerops pciuser_mem_pagerops = {
	.pgo_reference = pciuser_mem_reference,
	.pgo_detach = pciuser_mem_detach,
	.pgo_fault = pciuser_mem_fault,
};

static kmutex_t pciuser_claims_lock;
static LIST_HEAD(, pciuser_claimrec) pciuser_claims =
    LIST_HEAD_INITIALIZER(pciuser_claims);
static ONCE_DECL(pciuser_once);

static int
pciuser_init(void)
{

	mutex_init(&pciuser_claims_lock, MUTEX_DEFAULT, IPL_NONE);
	return 0;
}

/*
 * pciuser_claimed:
 *
 *	Hook for pci_probe_device(): true if a process has claimed the
 *	function, so that no kernel driver is attached to it by a
 *	rescan while the claim lasts.
 */
bool
pciuser_claimed(struct pci_softc *sc, int device, int function)
{
	struct pciuser_claimrec *c;
	bool found = false;

	RUN_ONCE(&pciuser_once, pciuser_init);
	mutex_enter(&pciuser_claims_lock);
	LIST_FOREACH(c, &pciuser_claims, c_entry) {
		if (c->c_sc == sc && c->c_device == device &&
		    c->c_function == function) {
			found = true;
			break;
		}
	}
	mutex_exit(&pciuser_claims_lock);
	return found;
}

/*
 * pciuser_open:
 *
 *	d_open of /dev/pciN (called from pciopen()): clone the open
 *	into a file with its own state.
 */
int
pciuser_open(dev_t dev, int flags, int mode, struct lwp *l)
{
	struct pci_softc *sc;
	struct pciuser_file *pf;
	struct file *fp;
	int error, fd;

	sc = device_lookup_private(&pci_cd, minor(dev));
	if (sc == NULL)
		return ENXIO;
	RUN_ONCE(&pciuser_once, pciuser_init);

	pf = kmem_zalloc(sizeof(*pf), KM_SLEEP);
	pf->pf_sih = softint_establish(SOFTINT_SERIAL | SOFTINT_MPSAFE,
	    pciuser_softintr, pf);
	if (pf->pf_sih == NULL) {
		kmem_free(pf, sizeof(*pf));
		return ENOMEM;
	}
	error = fd_allocfile(&fp, &fd);
	if (error) {
		softint_disestablish(pf->pf_sih);
		kmem_free(pf, sizeof(*pf));
		return error;
	}

	pf->pf_dev = dev;
	pf->pf_sc = sc;
	mutex_init(&pf->pf_lock, MUTEX_DEFAULT, IPL_NONE);
	mutex_init(&pf->pf_intr_lock, MUTEX_DEFAULT, IPL_VM);
	cv_init(&pf->pf_cv, "pciuser");
	selinit(&pf->pf_sel);
	LIST_INIT(&pf->pf_mems);
	LIST_INIT(&pf->pf_maps);
	pf->pf_nextmem = PCIUSER_DMAMEM_ID_MIN;
	pf->pf_nextmap = 1;

	return fd_clone(fp, fd, flags, &pciuser_fileops, pf);
}

/*
 * Pager objects.
 */

static void
pciuser_bar_reference(struct uvm_object *uobj)
{

	mutex_enter(uobj->vmobjlock);
	uobj->uo_refs++;
	mutex_exit(uobj->vmobjlock);
}

static void
pciuser_claim_free(struct pciuser_claimrec *c)
{
	struct pciuser_barstate *b;
	int i;

	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		b = &c->c_bar[i];
		if (b->b_mapped)
			bus_space_unmap(b->b_tag, b->b_handle, b->b_size);
	}
	mutex_enter(&pciuser_claims_lock);
	LIST_REMOVE(c, c_entry);
	mutex_exit(&pciuser_claims_lock);
	uvm_obj_destroy(&c->c_uobj, true);
	kmem_free(c, sizeof(*c));
}

/* Drops one reference to a claim's or a DMA memory's uvm object; true when it was the last. */
static bool
pciuser_uobj_unref(struct uvm_object *uobj)
{
	int refs;

	mutex_enter(uobj->vmobjlock);
	refs = --uobj->uo_refs;
	mutex_exit(uobj->vmobjlock);
	return refs == 0;
}

static void
pciuser_bar_detach(struct uvm_object *uobj)
{

	if (pciuser_uobj_unref(uobj))
		pciuser_claim_free((struct pciuser_claimrec *)uobj);
}

static void
pciuser_mem_reference(struct uvm_object *uobj)
{

	pciuser_bar_reference(uobj);
}

static void
pciuser_mem_free(struct pciuser_dmamem *m)
{

	KASSERT(m->m_loads == 0);
	bus_dmamem_unmap(m->m_dmat, m->m_kva, m->m_size);
	bus_dmamem_free(m->m_dmat, m->m_segs, m->m_nsegs);
	if (m->m_subtag)
		bus_dmatag_destroy(m->m_dmat);
	kmem_free(m->m_segs, m->m_maxsegs * sizeof(m->m_segs[0]));
	uvm_obj_destroy(&m->m_uobj, true);
	kmem_free(m, sizeof(*m));
}

static void
pciuser_mem_detach(struct uvm_object *uobj)
{

	if (pciuser_uobj_unref(uobj))
		pciuser_mem_free((struct pciuser_dmamem *)uobj);
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
	if (idx < 1 || idx > PCIUSER_MAXBARS)
		return (paddr_t)-1;
	b = &c->c_bar[idx - 1];
	if ((b->b_uflags & PCIUSER_BAR_MMAP) == 0 || rel >= b->b_size)
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

static int
pciuser_match_any(const struct pci_attach_args *pa)
{

	return 1;
}

static void
pciuser_probe_bars(struct pciuser_claimrec *c, struct pciuser_claim *uc)
{
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	struct pciuser_barstate *b;
	struct pciuser_bar *ub;
	bus_addr_t base;
	bus_size_t size;
	pcireg_t type;
	int i, reg, flags;

	for (i = 0; i < PCIUSER_MAXBARS; i++) {
		reg = PCI_MAPREG_START + 4 * i;
		b = &c->c_bar[i];
		ub = &uc->puc_bars[i];
		ub->pub_reg = reg;
		if (!pci_mapreg_probe(pc, c->c_tag, reg, &type))
			continue;
		if (pci_mapreg_info(pc, c->c_tag, reg, type, &base, &size,
		    &flags) != 0 || size == 0)
			continue;
		b->b_base = base;
		b->b_size = size;
		b->b_mapflags = flags;
		b->b_reg = reg;
		b->b_uflags = PCIUSER_BAR_VALID;
		if (PCI_MAPREG_TYPE(type) == PCI_MAPREG_TYPE_IO) {
			if ((c->c_pa.pa_flags & PCI_FLAGS_IO_OKAY) == 0) {
				b->b_uflags = 0;
				continue;
			}
			b->b_tag = c->c_pa.pa_iot;
			b->b_uflags |= PCIUSER_BAR_IO;
		} else {
			if ((c->c_pa.pa_flags & PCI_FLAGS_MEM_OKAY) == 0) {
				b->b_uflags = 0;
				continue;
			}
			b->b_tag = c->c_pa.pa_memt;
			if (flags & BUS_SPACE_MAP_PREFETCHABLE)
				b->b_uflags |= PCIUSER_BAR_PREFETCH;
			/*
			 * Only whole pages can be mapped: a BAR that
			 * is smaller than a page or not page aligned
			 * may share its page with another device, so
			 * it is reachable only through PIO ioctls.
			 */
			if ((base & PAGE_MASK) == 0 &&
			    (size & PAGE_MASK) == 0 &&
			    (uint64_t)size <= PCIUSER_MMAP_MASK)
				b->b_uflags |= PCIUSER_BAR_MMAP;
		}
		ub->pub_base = base;
		ub->pub_size = size;
		ub->pub_flags = b->b_uflags;
		if (b->b_uflags & PCIUSER_BAR_MMAP)
			ub->pub_cookie = PCIUSER_MMAP_BAR(i);
		if (PCI_MAPREG_TYPE(type) == PCI_MAPREG_TYPE_MEM &&
		    PCI_MAPREG_MEM_TYPE(type) == PCI_MAPREG_MEM_TYPE_64BIT) {
			b->b_uflags |= PCIUSER_BAR_MEM64;
			ub->pub_flags = b->b_uflags;
			i++;	/* upper half of a 64-bit BAR */
			if (i < PCIUSER_MAXBARS)
				uc->puc_bars[i].pub_reg = reg + 4;
		}
	}
}

static int
pciuser_claim(struct pciuser_file *pf, struct file *fp,
    struct pciuser_claim *uc)
{
	struct pci_softc *sc = pf->pf_sc;
	pci_chipset_tag_t pc = sc->sc_pc;
	struct pciuser_claimrec *c, *oc;
	pcireg_t bhlcr, csr;
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

	/*
	 * A claimed function can be made to DMA anywhere the IOMMU (if
	 * any) lets it, so claiming is as strong as access to unmanaged
	 * memory; see DESIGN.md.
	 */
	error = kauth_authorize_machdep(fp->f_cred,
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
	bhlcr = pci_conf_read(pc, tag, PCI_BHLC_REG);
	if (PCI_HDRTYPE_TYPE(bhlcr) != 0)
		return ENODEV;	/* bridges are not for userland */

	mutex_enter(&pf->pf_lock);
	if (pf->pf_claim != NULL) {
		error = EBUSY;
		goto out;
	}

	c = kmem_zalloc(sizeof(*c), KM_SLEEP);
	c->c_sc = sc;
	c->c_tag = tag;
	c->c_bus = uc->puc_bus;
	c->c_device = uc->puc_device;
	c->c_function = uc->puc_function;
	if (!pci_probe_device(sc, tag, pciuser_match_any, &c->c_pa)) {
		kmem_free(c, sizeof(*c));
		error = ENXIO;
		goto out;
	}

	/*
	 * Register the claim.  The kernel lock serializes us against
	 * autoconfiguration (pci_probe_device() consults the registry
	 * through pciuser_claimed()).
	 */
	KERNEL_LOCK(1, NULL);
	mutex_enter(&pciuser_claims_lock);
	error = 0;
	if (sc->PCI_SC_DEVICESC(c->c_device, c->c_function).c_dev != NULL)
		error = EBUSY;		/* a kernel driver owns it */
	LIST_FOREACH(oc, &pciuser_claims, c_entry) {
		if (oc->c_sc == sc && oc->c_device == c->c_device &&
		    oc->c_function == c->c_function)
			error = EBUSY;	/* another open file owns it */
	}
	if (error == 0)
		LIST_INSERT_HEAD(&pciuser_claims, c, c_entry);
	mutex_exit(&pciuser_claims_lock);
	KERNEL_UNLOCK_ONE(NULL);
	if (error) {
		kmem_free(c, sizeof(*c));
		goto out;
	}

	memset(uc->puc_bars, 0, sizeof(uc->puc_bars));
	pciuser_probe_bars(c, uc);

	uc->puc_version = PCIUSER_ABI_VERSION;
	uc->puc_id = c->c_pa.pa_id;
	uc->puc_class = c->c_pa.pa_class;
	uc->puc_subsys = pci_conf_read(pc, tag, PCI_SUBSYS_ID_REG);
	uc->puc_intrpin = c->c_pa.pa_intrpin;
	uc->puc_caps = 0;
	uc->puc_msi_count = 0;
	uc->puc_msix_count = 0;

	/* Does the INTx disable bit (PCI 2.3) stick? */
	csr = pci_conf_read(pc, tag, PCI_COMMAND_STATUS_REG);
	pci_conf_write(pc, tag, PCI_COMMAND_STATUS_REG,
	    (csr & PCIUSER_CSR_CMDMASK) | PCI_COMMAND_INTERRUPT_DISABLE);
	if (pci_conf_read(pc, tag, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_INTERRUPT_DISABLE) {
		c->c_intxdis = true;
		uc->puc_caps |= PCIUSER_CAP_INTX_DISABLE;
	}
	/* Leave INTx masked until the process establishes it. */
	if (!c->c_intxdis)
		pci_conf_write(pc, tag, PCI_COMMAND_STATUS_REG,
		    csr & PCIUSER_CSR_CMDMASK);

	if (pci_get_capability(pc, tag, PCI_CAP_MSI, &c->c_msioff, NULL)) {
		uc->puc_caps |= PCIUSER_CAP_MSI;
		uc->puc_msi_count = pci_msi_count(pc, tag);
	} else
		c->c_msioff = 0;
	if (pci_get_capability(pc, tag, PCI_CAP_MSIX, &c->c_msixoff, NULL)) {
		uc->puc_caps |= PCIUSER_CAP_MSIX;
		uc->puc_msix_count = pci_msix_count(pc, tag);
	} else
		c->c_msixoff = 0;
	if (pci_dma64_available(&c->c_pa))
		uc->puc_caps |= PCIUSER_CAP_DMA64;

	/* One reference, for this open file. */
	uvm_obj_init(&c->c_uobj, &pciuser_bar_pagerops, true, 1);
	pf->pf_claim = c;
out:
	mutex_exit(&pf->pf_lock);
	return error;
}

/*
 * Register access.
 */

static int
pciuser_bar_map(struct pciuser_claimrec *c, struct pciuser_barstate *b)
{
	int error;

	if (b->b_mapped)
		return 0;
	error = bus_space_map(b->b_tag, b->b_base, b->b_size,
	    b->b_mapflags & BUS_SPACE_MAP_PREFETCHABLE, &b->b_handle);
	if (error)
		return error;
	b->b_mapped = true;
	return 0;
}

static int
pciuser_bar_check(struct pciuser_claimrec *c, uint32_t bar, uint32_t width,
    uint64_t off, struct pciuser_barstate **bp)
{
	struct pciuser_barstate *b;

	if (bar >= PCIUSER_MAXBARS)
		return EINVAL;
	b = &c->c_bar[bar];
	if ((b->b_uflags & PCIUSER_BAR_VALID) == 0)
		return ENXIO;
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
	*bp = b;
	return pciuser_bar_map(c, b);
}

static uint64_t
pciuser_bar_read(struct pciuser_barstate *b, uint32_t width, uint64_t off)
{

	switch (width) {
	case 1:
		return bus_space_read_1(b->b_tag, b->b_handle, off);
	case 2:
		return bus_space_read_2(b->b_tag, b->b_handle, off);
	case 4:
		return bus_space_read_4(b->b_tag, b->b_handle, off);
#ifdef _LP64
	case 8:
		return bus_space_read_8(b->b_tag, b->b_handle, off);
#endif
	}
	return ~(uint64_t)0;
}

static void
pciuser_bar_write(struct pciuser_barstate *b, uint32_t width, uint64_t off,
    uint64_t val)
{

	switch (width) {
	case 1:
		bus_space_write_1(b->b_tag, b->b_handle, off, val);
		break;
	case 2:
		bus_space_write_2(b->b_tag, b->b_handle, off, val);
		break;
	case 4:
		bus_space_write_4(b->b_tag, b->b_handle, off, val);
		break;
#ifdef _LP64
	case 8:
		bus_space_write_8(b->b_tag, b->b_handle, off, val);
		break;
#endif
	}
}

static int
pciuser_pio(struct pciuser_claimrec *c, struct pciuser_pio *p, bool write)
{
	struct pciuser_barstate *b;
	int error;

	error = pciuser_bar_check(c, p->pio_bar, p->pio_width,
	    p->pio_offset, &b);
	if (error)
		return error;
	if (write)
		pciuser_bar_write(b, p->pio_width, p->pio_offset,
		    p->pio_value);
	else
		p->pio_value = pciuser_bar_read(b, p->pio_width,
		    p->pio_offset);
	return 0;
}

static bool
pciuser_cfg_writable(struct pciuser_claimrec *c, uint32_t reg)
{

	if (reg >= PCI_MAPREG_START && reg < PCI_MAPREG_END)
		return false;
	if (reg == PCI_MAPREG_ROM || reg == PCI_INTERRUPT_REG)
		return false;
	if (c->c_msioff != 0 && reg >= (uint32_t)c->c_msioff &&
	    reg < (uint32_t)c->c_msioff + PCIUSER_MSI_CAPLEN)
		return false;
	if (c->c_msixoff != 0 && reg >= (uint32_t)c->c_msixoff &&
	    reg < (uint32_t)c->c_msixoff + PCIUSER_MSIX_CAPLEN)
		return false;
	return true;
}

static int
pciuser_cfg(struct pciuser_file *pf, struct pciuser_cfgreg *r, bool write)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	pcireg_t cur, val;

	if ((r->pcr_reg & 3) != 0 || r->pcr_reg >= PCI_EXTCONF_SIZE)
		return EINVAL;
	if (!write) {
		r->pcr_val = pci_conf_read(pc, c->c_tag, r->pcr_reg);
		return 0;
	}
	if (!pciuser_cfg_writable(c, r->pcr_reg))
		return EPERM;
	if (r->pcr_reg != PCI_COMMAND_STATUS_REG) {
		pci_conf_write(pc, c->c_tag, r->pcr_reg, r->pcr_val);
		return 0;
	}
	/* The INTx disable bit belongs to the kernel while INTx is live. */
	mutex_spin_enter(&pf->pf_intr_lock);
	val = r->pcr_val;
	if (pf->pf_nvecs != 0 && pf->pf_intrtype == PCI_INTR_TYPE_INTX &&
	    c->c_intxdis) {
		cur = pci_conf_read(pc, c->c_tag, PCI_COMMAND_STATUS_REG);
		val &= ~PCI_COMMAND_INTERRUPT_DISABLE;
		val |= cur & PCI_COMMAND_INTERRUPT_DISABLE;
	}
	pci_conf_write(pc, c->c_tag, PCI_COMMAND_STATUS_REG, val);
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
		    (pciuser_bar_read(b, ack->pia_width,
		    ack->pia_status_offset) & ack->pia_status_mask) == 0) {
			mutex_spin_exit(&pf->pf_intr_lock);
			return 0;	/* shared line, not ours */
		}
		pciuser_bar_write(b, ack->pia_width, ack->pia_offset,
		    ack->pia_value);
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

static void
pciuser_softintr(void *arg)
{
	struct pciuser_file *pf = arg;

	mutex_spin_enter(&pf->pf_intr_lock);
	cv_broadcast(&pf->pf_cv);
	selnotify(&pf->pf_sel, POLLIN | POLLRDNORM, NOTE_SUBMIT);
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

static void
pciuser_intr_teardown(struct pciuser_file *pf)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	pci_chipset_tag_t pc = c->c_pa.pa_pc;
	struct pciuser_vec *vecs;
	int i, n;

	KASSERT(mutex_owned(&pf->pf_lock));
	if (pf->pf_nvecs == 0)
		return;
	n = pf->pf_nvecs;
	vecs = pf->pf_vecs;

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
	pci_intr_release(pc, pf->pf_ihps, n);

	mutex_spin_enter(&pf->pf_intr_lock);
	pf->pf_nvecs = 0;
	pf->pf_vecs = NULL;
	pf->pf_ihps = NULL;
	pf->pf_intx_masked = false;
	cv_broadcast(&pf->pf_cv);
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
	int error, i, n;

	KASSERT(mutex_owned(&pf->pf_lock));
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
		type = PCI_INTR_TYPE_MSI;
		handler = pciuser_msi_intr;
		break;
	case PCIUSER_INTR_MSIX:
		type = PCI_INTR_TYPE_MSIX;
		handler = pciuser_msi_intr;
		break;
	default:
		return EINVAL;
	}

	memset(counts, 0, sizeof(counts));
	counts[type] = is->pis_count;
	error = pci_intr_alloc(pa, &ihps, counts, type);
	if (error)
		return error;
	n = counts[type];
	if (n <= 0 || n > (int)is->pis_count) {
		/* Not expected; treat what we asked for as allocated. */
		n = is->pis_count;
	}
	vecs = kmem_zalloc(n * sizeof(vecs[0]), KM_SLEEP);

	mutex_spin_enter(&pf->pf_intr_lock);
	if (type == PCI_INTR_TYPE_INTX && c->c_intxdis)
		pciuser_intx_set(pf, true);
	pf->pf_ihps = ihps;
	pf->pf_vecs = vecs;
	pf->pf_nvecs = n;
	pf->pf_intrtype = type;
	pf->pf_intx_masked = false;
	mutex_spin_exit(&pf->pf_intr_lock);

	for (i = 0; i < n; i++) {
		v = &vecs[i];
		v->v_pf = pf;
		v->v_index = i;
		snprintf(v->v_name, sizeof(v->v_name), "pciuser%d.%d.%d/%d",
		    c->c_bus, c->c_device, c->c_function, i);
		pci_intr_setattr(pc, &ihps[i], PCI_INTR_MPSAFE, true);
		v->v_ih = pci_intr_establish_xname(pc, ihps[i], IPL_VM,
		    handler, v, v->v_name);
		if (v->v_ih == NULL) {
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
	int error;

	KASSERT(mutex_owned(&pf->pf_lock));
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
	error = pciuser_bar_check(c, a->pia_bar, a->pia_width,
	    a->pia_offset, &b);
	if (error)
		return error;
	if (a->pia_flags & PCIUSER_ACK_STATUS) {
		error = pciuser_bar_check(c, a->pia_bar, a->pia_width,
		    a->pia_status_offset, &b);
		if (error)
			return error;
	}
	pf->pf_ack = *a;
	return 0;
}

static int
pciuser_intr_unmask(struct pciuser_file *pf,
    const struct pciuser_intr_unmask *u)
{
	struct pciuser_claimrec *c = pf->pf_claim;

	KASSERT(mutex_owned(&pf->pf_lock));
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
		limit = ~(uint64_t)0;
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
	    BUS_DMA_WAITOK);
	if (error)
		return error;
	*subp = true;
	return 0;
}

static bool
pciuser_pow2(uint64_t x)
{

	return (x & (x - 1)) == 0;
}

static struct pciuser_dmamem *
pciuser_mem_lookup(struct pciuser_file *pf, uint32_t id)
{
	struct pciuser_dmamem *m;

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
	int error, maxsegs, flags;

	KASSERT(mutex_owned(&pf->pf_lock));
	if (a->pdm_size == 0 || a->pdm_size > PCIUSER_MMAP_MASK ||
	    (a->pdm_flags & ~(PCIUSER_DMA_COHERENT | PCIUSER_DMA_64BIT |
	    PCIUSER_DMA_PREFETCH)) != 0)
		return EINVAL;
	if (!pciuser_pow2(a->pdm_align) || !pciuser_pow2(a->pdm_boundary))
		return EINVAL;
	size = round_page((bus_size_t)a->pdm_size);
	align = a->pdm_align < PAGE_SIZE ? PAGE_SIZE : a->pdm_align;
	if (a->pdm_boundary != 0 && a->pdm_boundary < size &&
	    a->pdm_maxsegs == 1)
		return EINVAL;
	maxsegs = a->pdm_maxsegs;
	if (maxsegs <= 0 || (bus_size_t)maxsegs > size / PAGE_SIZE)
		maxsegs = size / PAGE_SIZE;
	if (pf->pf_nextmem > PCIUSER_DMAMEM_ID_MAX)
		return ENOSPC;

	m = kmem_zalloc(sizeof(*m), KM_SLEEP);
	m->m_maxsegs = maxsegs;
	m->m_segs = kmem_zalloc(maxsegs * sizeof(m->m_segs[0]), KM_SLEEP);
	m->m_size = size;
	error = pciuser_dmatag(c, a->pdm_maxaddr, a->pdm_flags, &m->m_dmat,
	    &m->m_subtag);
	if (error)
		goto fail0;
	error = bus_dmamem_alloc(m->m_dmat, size, align, a->pdm_boundary,
	    m->m_segs, maxsegs, &m->m_nsegs, BUS_DMA_WAITOK);
	if (error)
		goto fail1;
	flags = BUS_DMA_WAITOK;
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
	m->m_id = pf->pf_nextmem++;
	uvm_obj_init(&m->m_uobj, &pciuser_mem_pagerops, true, 1);
	LIST_INSERT_HEAD(&pf->pf_mems, m, m_entry);

	a->pdm_id = m->m_id;
	a->pdm_nsegs = m->m_nsegs;
	a->pdm_cookie = (uint64_t)m->m_id << PCIUSER_MMAP_SHIFT;
	return 0;

fail2:	bus_dmamem_free(m->m_dmat, m->m_segs, m->m_nsegs);
fail1:	if (m->m_subtag)
		bus_dmatag_destroy(m->m_dmat);
fail0:	kmem_free(m->m_segs, maxsegs * sizeof(m->m_segs[0]));
	kmem_free(m, sizeof(*m));
	return error;
}

/* Drop the file's reference; freed now or at the last munmap. */
static int
pciuser_dmamem_free(struct pciuser_file *pf, struct pciuser_dmamem *m)
{

	KASSERT(mutex_owned(&pf->pf_lock));
	if (m->m_loads != 0)
		return EBUSY;
	LIST_REMOVE(m, m_entry);
	pciuser_mem_detach(&m->m_uobj);
	return 0;
}

static int
pciuser_dmamap_create(struct pciuser_file *pf,
    struct pciuser_dmamap_create *a)
{
	struct pciuser_claimrec *c = pf->pf_claim;
	struct pciuser_dmamap *d;
	int error;

	KASSERT(mutex_owned(&pf->pf_lock));
	if (a->pdc_maxsize == 0 || a->pdc_maxsize > PCIUSER_MMAP_MASK ||
	    a->pdc_maxsegsz == 0 || a->pdc_nsegments == 0 ||
	    a->pdc_nsegments > 4096 || !pciuser_pow2(a->pdc_boundary) ||
	    (a->pdc_flags & ~PCIUSER_DMA_64BIT) != 0)
		return EINVAL;
	if (pf->pf_nextmap == 0)
		return ENOSPC;

	d = kmem_zalloc(sizeof(*d), KM_SLEEP);
	error = pciuser_dmatag(c, a->pdc_maxaddr, a->pdc_flags, &d->d_dmat,
	    &d->d_subtag);
	if (error)
		goto fail0;
	error = bus_dmamap_create(d->d_dmat, a->pdc_maxsize, a->pdc_nsegments,
	    a->pdc_maxsegsz, a->pdc_boundary, BUS_DMA_WAITOK, &d->d_map);
	if (error)
		goto fail1;
	d->d_id = pf->pf_nextmap++;
	LIST_INSERT_HEAD(&pf->pf_maps, d, d_entry);
	a->pdc_id = d->d_id;
	return 0;

fail1:	if (d->d_subtag)
		bus_dmatag_destroy(d->d_dmat);
fail0:	kmem_free(d, sizeof(*d));
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
pciuser_dmamap_destroy(struct pciuser_dmamap *d)
{

	pciuser_dmamap_unload(d);
	LIST_REMOVE(d, d_entry);
	bus_dmamap_destroy(d->d_dmat, d->d_map);
	if (d->d_subtag)
		bus_dmatag_destroy(d->d_dmat);
	kmem_free(d, sizeof(*d));
}

static int
pciuser_dmamap_load(struct pciuser_file *pf, struct pciuser_dmamap_load *a)
{
	struct pciuser_dma_seg useg;
	struct pciuser_dmamap *d;
	struct pciuser_dmamem *m;
	int error, flags, i;

	KASSERT(mutex_owned(&pf->pf_lock));
	if ((d = pciuser_map_lookup(pf, a->pdl_map)) == NULL ||
	    (m = pciuser_mem_lookup(pf, a->pdl_mem)) == NULL)
		return ENOENT;
	if (d->d_mem != NULL)
		return EBUSY;
	if (a->pdl_len == 0 || a->pdl_offset >= m->m_size ||
	    m->m_size - a->pdl_offset < a->pdl_len ||
	    (a->pdl_flags & ~(PCIUSER_LOAD_READ | PCIUSER_LOAD_WRITE)) != 0)
		return EINVAL;
	flags = BUS_DMA_WAITOK;
	if (a->pdl_flags & PCIUSER_LOAD_READ)
		flags |= BUS_DMA_READ;
	if (a->pdl_flags & PCIUSER_LOAD_WRITE)
		flags |= BUS_DMA_WRITE;
	/*
	 * Load from the kernel mapping of the dmamem object: the map
	 * sees exactly the pages the process has mmapped, through the
	 * IOMMU where the platform's bus_dma has one.
	 */
	error = bus_dmamap_load(d->d_dmat, d->d_map,
	    (char *)m->m_kva + a->pdl_offset, a->pdl_len, NULL, flags);
	if (error)
		return error;
	if ((uint32_t)d->d_map->dm_nsegs > a->pdl_maxsegs) {
		bus_dmamap_unload(d->d_dmat, d->d_map);
		a->pdl_nsegs = d->d_map->dm_nsegs;
		return E2BIG;
	}
	for (i = 0; i < d->d_map->dm_nsegs; i++) {
		useg.ds_addr = d->d_map->dm_segs[i].ds_addr;
		useg.ds_len = d->d_map->dm_segs[i].ds_len;
		error = copyout(&useg, (void *)(uintptr_t)(a->pdl_segs +
		    i * sizeof(useg)), sizeof(useg));
		if (error) {
			bus_dmamap_unload(d->d_dmat, d->d_map);
			return error;
		}
	}
	a->pdl_nsegs = d->d_map->dm_nsegs;
	pciuser_mem_reference(&m->m_uobj);
	m->m_loads++;
	d->d_mem = m;
	return 0;
}

static int
pciuser_dmamap_sync(struct pciuser_file *pf, struct pciuser_dmamap_sync *a)
{
	struct pciuser_dmamap *d;
	const uint32_t ops = PCIUSER_SYNC_PREREAD | PCIUSER_SYNC_POSTREAD |
	    PCIUSER_SYNC_PREWRITE | PCIUSER_SYNC_POSTWRITE;

	KASSERT(mutex_owned(&pf->pf_lock));
	if ((d = pciuser_map_lookup(pf, a->pds_map)) == NULL)
		return ENOENT;
	if (d->d_mem == NULL)
		return EINVAL;
	if (a->pds_ops == 0 || (a->pds_ops & ~ops) != 0 ||
	    a->pds_offset >= d->d_map->dm_mapsize ||
	    d->d_map->dm_mapsize - a->pds_offset < a->pds_len)
		return EINVAL;
	bus_dmamap_sync(d->d_dmat, d->d_map, a->pds_offset, a->pds_len,
	    a->pds_ops);
	return 0;
}

/*
 * fileops.
 */

static int
pciuser_ioctl(struct file *fp, u_long cmd, void *data)
{
	struct pciuser_file *pf = fp->f_data;
	struct pciuser_dmamem *m;
	struct pciuser_dmamap *d;
	struct pciuser_dma_id *di = data;
	int error;

	switch (cmd) {
	case FIONBIO:
		return 0;	/* FNONBLOCK is consulted by read */
	case FIOASYNC:
		return *(int *)data ? EOPNOTSUPP : 0;
	case PCIUSER_IOC_CLAIM:
		return pciuser_claim(pf, fp, data);
	case PCIUSER_IOC_CFGREAD:
	case PCIUSER_IOC_CFGWRITE:
	case PCIUSER_IOC_PIO_READ:
	case PCIUSER_IOC_PIO_WRITE:
	case PCIUSER_IOC_INTR_ESTABLISH:
	case PCIUSER_IOC_INTR_DISESTABLISH:
	case PCIUSER_IOC_INTR_SETACK:
	case PCIUSER_IOC_INTR_UNMASK:
	case PCIUSER_IOC_DMAMEM_ALLOC:
	case PCIUSER_IOC_DMAMEM_FREE:
	case PCIUSER_IOC_DMAMAP_CREATE:
	case PCIUSER_IOC_DMAMAP_DESTROY:
	case PCIUSER_IOC_DMAMAP_LOAD:
	case PCIUSER_IOC_DMAMAP_UNLOAD:
	case PCIUSER_IOC_DMAMAP_SYNC:
		break;
	default:
		/* The pci(4) ioctls of pci_usrreq.c. */
		return (*pci_cdevsw.d_ioctl)(pf->pf_dev, cmd, data,
		    fp->f_flag, curlwp);
	}

	mutex_enter(&pf->pf_lock);
	if (pf->pf_claim == NULL) {
		error = ENXIO;
		goto out;
	}
	switch (cmd) {
	case PCIUSER_IOC_CFGREAD:
		error = pciuser_cfg(pf, data, false);
		break;
	case PCIUSER_IOC_CFGWRITE:
		error = pciuser_cfg(pf, data, true);
		break;
	case PCIUSER_IOC_PIO_READ:
		error = pciuser_pio(pf->pf_claim, data, false);
		break;
	case PCIUSER_IOC_PIO_WRITE:
		error = pciuser_pio(pf->pf_claim, data, true);
		break;
	case PCIUSER_IOC_INTR_ESTABLISH:
		error = pciuser_intr_establish(pf, data);
		break;
	case PCIUSER_IOC_INTR_DISESTABLISH:
		pciuser_intr_teardown(pf);
		error = 0;
		break;
	case PCIUSER_IOC_INTR_SETACK:
		error = pciuser_intr_setack(pf, data);
		break;
	case PCIUSER_IOC_INTR_UNMASK:
		error = pciuser_intr_unmask(pf, data);
		break;
	case PCIUSER_IOC_DMAMEM_ALLOC:
		error = pciuser_dmamem_alloc(pf, data);
		break;
	case PCIUSER_IOC_DMAMEM_FREE:
		if ((m = pciuser_mem_lookup(pf, di->pdi_id)) == NULL)
			error = ENOENT;
		else
			error = pciuser_dmamem_free(pf, m);
		break;
	case PCIUSER_IOC_DMAMAP_CREATE:
		error = pciuser_dmamap_create(pf, data);
		break;
	case PCIUSER_IOC_DMAMAP_DESTROY:
	case PCIUSER_IOC_DMAMAP_UNLOAD:
		if ((d = pciuser_map_lookup(pf, di->pdi_id)) == NULL) {
			error = ENOENT;
			break;
		}
		if (cmd == PCIUSER_IOC_DMAMAP_DESTROY)
			pciuser_dmamap_destroy(d);
		else
			pciuser_dmamap_unload(d);
		error = 0;
		break;
	case PCIUSER_IOC_DMAMAP_LOAD:
		error = pciuser_dmamap_load(pf, data);
		break;
	case PCIUSER_IOC_DMAMAP_SYNC:
		error = pciuser_dmamap_sync(pf, data);
		break;
	default:
		error = ENOTTY;
		break;
	}
out:
	mutex_exit(&pf->pf_lock);
	return error;
}

static int
pciuser_read(struct file *fp, off_t *offp, struct uio *uio, kauth_cred_t cred,
    int flags)
{
	struct pciuser_file *pf = fp->f_data;
	struct pciuser_intr_event ev[PCIUSER_MAXVECS];
	size_t max, n;
	int error, i;

	if (uio->uio_resid < (ssize_t)sizeof(ev[0]))
		return EINVAL;
	max = MIN((size_t)uio->uio_resid / sizeof(ev[0]), __arraycount(ev));

	n = 0;
	error = 0;
	mutex_spin_enter(&pf->pf_intr_lock);
	for (;;) {
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
	for (i = 0; i < pf->pf_nvecs && n < max; i++) {
		if (pf->pf_vecs[i].v_pending == 0)
			continue;
		ev[n].pie_vector = i;
		ev[n].pie_count = pf->pf_vecs[i].v_pending;
		pf->pf_vecs[i].v_pending = 0;
		n++;
	}
out:
	mutex_spin_exit(&pf->pf_intr_lock);
	if (error == 0 && n > 0)
		error = uiomove(ev, n * sizeof(ev[0]), uio);
	return error;
}

static int
pciuser_poll(struct file *fp, int events)
{
	struct pciuser_file *pf = fp->f_data;
	int revents = 0;

	if ((events & (POLLIN | POLLRDNORM)) == 0)
		return 0;
	mutex_spin_enter(&pf->pf_intr_lock);
	if (pf->pf_nvecs != 0 && pciuser_pending(pf) != 0)
		revents = events & (POLLIN | POLLRDNORM);
	else
		selrecord(curlwp, &pf->pf_sel);
	mutex_spin_exit(&pf->pf_intr_lock);
	return revents;
}

static void
filt_pciuser_detach(struct knote *kn)
{
	struct pciuser_file *pf = kn->kn_hook;

	mutex_spin_enter(&pf->pf_intr_lock);
	SLIST_REMOVE(&pf->pf_sel.sel_klist, kn, knote, kn_selnext);
	mutex_spin_exit(&pf->pf_intr_lock);
}

static int
filt_pciuser_read(struct knote *kn, long hint)
{
	struct pciuser_file *pf = kn->kn_hook;
	int rv;

	if (hint != NOTE_SUBMIT)
		mutex_spin_enter(&pf->pf_intr_lock);
	kn->kn_data = pf->pf_nvecs != 0 ? pciuser_pending(pf) : 0;
	rv = kn->kn_data > 0;
	if (hint != NOTE_SUBMIT)
		mutex_spin_exit(&pf->pf_intr_lock);
	return rv;
}

static const struct filterops pciuser_read_filtops = {
#ifdef FILTEROP_ISFD
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

	switch (kn->kn_filter) {
	case EVFILT_READ:
		kn->kn_fop = &pciuser_read_filtops;
		break;
	default:
		return EINVAL;
	}
	kn->kn_hook = pf;
	mutex_spin_enter(&pf->pf_intr_lock);
	SLIST_INSERT_HEAD(&pf->pf_sel.sel_klist, kn, kn_selnext);
	mutex_spin_exit(&pf->pf_intr_lock);
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

	if ((*flagsp & MAP_SHARED) == 0)
		return EINVAL;	/* device memory is never private */
	maxprot = 0;
	if (fp->f_flag & FREAD)
		maxprot |= VM_PROT_READ;
	if (fp->f_flag & FWRITE)
		maxprot |= VM_PROT_WRITE;
	if ((prot & ~maxprot) != 0)
		return EACCES;
	if (*offp < 0)
		return EINVAL;

	mutex_enter(&pf->pf_lock);
	c = pf->pf_claim;
	if (c == NULL) {
		/* Unclaimed: pci_usrreq.c's pcimmap(), as before. */
		mutex_exit(&pf->pf_lock);
		uobj = udv_attach(pf->pf_dev, maxprot, *offp, size);
		if (uobj == NULL)
			return EINVAL;
		*uobjp = uobj;
		*advicep = UVM_ADV_RANDOM;
		*maxprotp = maxprot;
		return 0;
	}

	idx = (uint64_t)*offp >> PCIUSER_MMAP_SHIFT;
	rel = (uint64_t)*offp & PCIUSER_MMAP_MASK;
	error = 0;
	uobj = NULL;
	if (idx >= 1 && idx <= PCIUSER_MAXBARS) {
		b = &c->c_bar[idx - 1];
		if ((b->b_uflags & PCIUSER_BAR_MMAP) == 0 ||
		    rel >= b->b_size || b->b_size - rel < size)
			error = EINVAL;
		else
			uobj = &c->c_uobj;
	} else if (idx >= PCIUSER_DMAMEM_ID_MIN &&
	    (m = pciuser_mem_lookup(pf, (uint32_t)idx)) != NULL) {
		if (rel >= m->m_size || m->m_size - rel < size)
			error = EINVAL;
		else
			uobj = &m->m_uobj;
	} else
		error = EINVAL;
	if (error == 0) {
		/* The mapping's reference, dropped by pgo_detach. */
		(*uobj->pgops->pgo_reference)(uobj);
		*uobjp = uobj;
		*advicep = UVM_ADV_RANDOM;
		*maxprotp = maxprot;
	}
	mutex_exit(&pf->pf_lock);
	return error;
}

/*
 * pciuser_close:
 *
 *	Tear everything down in an order that is safe against a device
 *	that is still running: stop DMA, stop interrupts, unload the
 *	maps, then let go of the memory and the claim.
 */
static int
pciuser_close(struct file *fp)
{
	struct pciuser_file *pf = fp->f_data;
	struct pciuser_claimrec *c = pf->pf_claim;
	struct pciuser_dmamap *d;
	struct pciuser_dmamem *m;
	pcireg_t csr;

	mutex_enter(&pf->pf_lock);
	if (c != NULL) {
		/* 1. No new DMA: clear bus master enable. */
		csr = pci_conf_read(c->c_pa.pa_pc, c->c_tag,
		    PCI_COMMAND_STATUS_REG);
		csr &= PCIUSER_CSR_CMDMASK;
		csr &= ~PCI_COMMAND_MASTER_ENABLE;
		pci_conf_write(c->c_pa.pa_pc, c->c_tag,
		    PCI_COMMAND_STATUS_REG, csr);

		/* 2. Interrupts off (INTx masked, MSI released). */
		pciuser_intr_teardown(pf);

		/* 3. Unload and destroy the maps (IOMMU entries go). */
		while ((d = LIST_FIRST(&pf->pf_maps)) != NULL)
			pciuser_dmamap_destroy(d);

		/* 4. DMA memory: freed now, or at its last munmap. */
		while ((m = LIST_FIRST(&pf->pf_mems)) != NULL)
			(void)pciuser_dmamem_free(pf, m);
	}
	mutex_exit(&pf->pf_lock);

	if (pf->pf_sih != NULL)
		softint_disestablish(pf->pf_sih);

	/* 5. The claim: released now, or at the last BAR munmap. */
	if (c != NULL)
		pciuser_bar_detach(&c->c_uobj);

	seldestroy(&pf->pf_sel);
	cv_destroy(&pf->pf_cv);
	mutex_destroy(&pf->pf_intr_lock);
	mutex_destroy(&pf->pf_lock);
	kmem_free(pf, sizeof(*pf));
	fp->f_data = NULL;
	return 0;
}
