/*
 * fuzz.c: a libFuzzer target of pci_user.c's user boundary, on the
 * stand-in kernel of kstub.c (build.sh fuzz).  Each input is decoded
 * into a sequence of "system calls" on up to two descriptors of
 * /dev/pci0: open, close, ioctl (every pciuser(4) and pci(4) ioctl,
 * and raw command words), mmap, munmap, page faults on a mapping,
 * read, poll, stat, kqueue filter attach/detach/event, a detach of
 * the bus, and device-side events (the NIC raising a vector, pmap or
 * kauth failing, the DMA caps changed by sysctl).  The fake device
 * never turns bus mastering on by itself (the harness's sticky-master
 * case leaks on purpose, so it is not fuzzed), and DMA memory is not
 * unmapped while the NIC masters (pci_user.c then leaks the pages of
 * memory already freed, on purpose, as case
 * dma_freed_mapped_master_leaks checks; the munmap waits for the end
 * of the input, after the closes).  Arguments are the
 * input's bytes, with a bias toward values that matter (ids handed
 * out, page multiples, BAR offsets).
 *
 * After each input every knote, descriptor and mapping left is
 * dropped, the bus is detached (forced) and h_shutdown_check must find
 * nothing left: kmem, locks held, softints, vectors, BAR mappings, DMA
 * tags, maps and pages, files, DMA charge.  A leak calls abort(), and
 * so does every stand-in panic (LOCKDEBUG checks, x86 bus_dma's), so
 * libFuzzer reports a crash with its reproducer.  All global state is
 * reset before each input (h_reset, h_boot), so runs are
 * deterministic; lock order is tracked per input.
 *
 * Single-threaded: read(2) is always non-blocking.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kstub.h"
#include "harness.h"
#include <dev/pci/pciuserio.h>

struct in {
	const uint8_t	*p;
	size_t		n;
};

static uint8_t
u8(struct in *in)
{

	if (in->n == 0)
		return 0;
	in->n--;
	return *in->p++;
}

static uint32_t
u32raw(struct in *in)
{
	uint32_t v = 0;
	int i;

	for (i = 0; i < 4; i++)
		v |= (uint32_t)u8(in) << (8 * i);
	return v;
}

static uint64_t
u64raw(struct in *in)
{

	return u32raw(in) | (uint64_t)u32raw(in) << 32;
}

/* A 64-bit argument: a small constant, a page multiple or raw bytes. */
static uint64_t
val64(struct in *in)
{
	static const uint64_t k[] = { 0, 1, 2, 4, 8, 0x10, 0x1000, 0x2000,
	    0x4000, 0x10000, 0x20000, 0xfff, 0x1001, 0xffffffffULL,
	    0x100000000ULL, ~0ULL, ~0ULL - 0xfff, 1ULL << 63, 0x7fffffff,
	    0x80000000ULL };
	uint8_t s = u8(in);

	if (s < 0x80)
		return k[s % __arraycount(k)];
	if (s < 0xa0)
		return (uint64_t)(s - 0x80 + 1) * PAGE_SIZE;
	if (s < 0xc0)
		return (uint64_t)u8(in) << 2;	/* register-ish offsets */
	if (s < 0xe0)
		return u32raw(in);
	return u64raw(in);
}

static uint32_t
val32(struct in *in)
{

	return (uint32_t)val64(in);
}

#define	NFD	2
#define	NOBJ	8
#define	NKN	4

static struct file *fds[NFD];
static struct uvm_object *objs[NOBJ];
static uint64_t objoff[NOBJ], objsize[NOBJ];	/* the mapped range */
static struct knote *kns[NKN];
static int knfd[NKN];
static uint32_t ids[8];		/* dmamem and dmamap ids handed out */
static int nids;
static uint64_t cookies[4];	/* dmamem mmap cookies handed out */
static int ncookies;
static uint64_t cap_file, cap_total;

static void
remember_id(uint32_t id)
{

	ids[nids++ % __arraycount(ids)] = id;
}

/* An id: one handed out, or an arbitrary number. */
static uint32_t
pick_id(struct in *in)
{
	uint8_t s = u8(in);

	if (s < 0xc0 && nids > 0)
		return ids[s % (nids < 8 ? nids : 8)];
	return val32(in);
}

static unsigned long
pick_cmd(struct in *in)
{
	static const unsigned long cmds[] = {
		PCIUSER_IOC_CLAIM, PCIUSER_IOC_CFGREAD, PCIUSER_IOC_CFGWRITE,
		PCIUSER_IOC_PIO_READ, PCIUSER_IOC_PIO_WRITE,
		PCIUSER_IOC_INTR_ESTABLISH, PCIUSER_IOC_INTR_DISESTABLISH,
		PCIUSER_IOC_INTR_SETACK, PCIUSER_IOC_INTR_UNMASK,
		PCIUSER_IOC_DMAMEM_ALLOC, PCIUSER_IOC_DMAMEM_FREE,
		PCIUSER_IOC_DMAMAP_CREATE, PCIUSER_IOC_DMAMAP_DESTROY,
		PCIUSER_IOC_DMAMAP_LOAD, PCIUSER_IOC_DMAMAP_UNLOAD,
		PCIUSER_IOC_DMAMAP_SYNC, PCI_IOC_CFGREAD, PCI_IOC_CFGWRITE,
		PCI_IOC_BDF_CFGREAD, PCI_IOC_BDF_CFGWRITE, PCI_IOC_BUSINFO,
		PCI_IOC_DRVNAME, PCI_IOC_DRVNAMEONBUS, FIONBIO, FIOASYNC,
	};
	uint8_t s = u8(in);

	if (s < 0xf0)
		return cmds[s % __arraycount(cmds)];
	/* A raw command word, its length kept to the arg buffer. */
	return u32raw(in);
}

static int
pick_fd(struct in *in)
{

	return u8(in) % NFD;
}

/* Build the argument of cmd from the input, then issue it. */
static void
do_ioctl(struct in *in)
{
	union {
		struct pciuser_claim c;
		struct pciuser_cfgreg r;
		struct pciuser_pio pio;
		struct pciuser_intr_setup is;
		struct pciuser_intr_ack ia;
		struct pciuser_intr_unmask iu;
		struct pciuser_dmamem_alloc dm;
		struct pciuser_dma_id di;
		struct pciuser_dmamap_create dc;
		struct pciuser_dmamap_load dl;
		struct pciuser_dmamap_sync ds;
		struct pciio_bdf_cfgreg b;
		unsigned char raw[IOCPARM_MASK + 1];
	} a;
	struct pciuser_dma_seg *segs = NULL;
	struct file *fp;
	unsigned long cmd;
	size_t i, len;
	uint32_t nsegbuf = 0;
	int f, error;

	f = pick_fd(in);
	cmd = pick_cmd(in);
	if ((fp = fds[f]) == NULL)
		return;
	memset(&a, 0, sizeof(a));
	len = IOCPARM_LEN(cmd);
	switch (cmd) {
	case PCIUSER_IOC_CLAIM:
		a.c.puc_bus = u8(in) < 0xf0 ? 0 : val32(in);
		a.c.puc_device = u8(in) < 0xc0 ? H_DEV_NIC :
		    (u8(in) < 0x80 ? H_DEV_VICTIM : val32(in));
		a.c.puc_function = u8(in) < 0xf0 ? 0 : val32(in);
		a.c.puc_flags = u8(in) < 0xf0 ? 0 : val32(in);
		break;
	case PCIUSER_IOC_CFGREAD:
	case PCIUSER_IOC_CFGWRITE:
	case PCI_IOC_CFGREAD:
	case PCI_IOC_CFGWRITE:
		a.r.pcr_reg = u8(in) < 0xe0 ? (uint32_t)u8(in) << 2 |
		    (u8(in) < 0x80 ? 0 : 0x400) : val32(in);
		a.r.pcr_val = u8(in) < 0x80 ? u32raw(in) : val32(in);
		break;
	case PCI_IOC_BDF_CFGREAD:
	case PCI_IOC_BDF_CFGWRITE:
		a.b.bus = u8(in) < 0xf0 ? 0 : val32(in);
		a.b.device = u8(in) % 2 ? H_DEV_NIC : u8(in);
		a.b.function = u8(in) < 0xf0 ? 0 : val32(in);
		a.b.cfgreg.reg = (uint32_t)u8(in) << 2;
		a.b.cfgreg.val = u32raw(in);
		break;
	case PCIUSER_IOC_PIO_READ:
	case PCIUSER_IOC_PIO_WRITE:
		a.pio.pio_bar = u8(in) < 0xf0 ? u8(in) % 6 : val32(in);
		a.pio.pio_width = u8(in) < 0xf0 ? 1U << (u8(in) % 5) :
		    val32(in);
		a.pio.pio_offset = val64(in);
		a.pio.pio_value = u64raw(in);
		break;
	case PCIUSER_IOC_INTR_ESTABLISH:
		a.is.pis_type = u8(in) < 0xf0 ? u8(in) % 3 : val32(in);
		a.is.pis_count = val32(in);
		a.is.pis_flags = u8(in) < 0xf0 ? 0 : val32(in);
		break;
	case PCIUSER_IOC_INTR_SETACK:
		a.ia.pia_flags = u8(in) < 0xf0 ? u8(in) % 4 : val32(in);
		a.ia.pia_bar = u8(in) < 0xf0 ? u8(in) % 6 : val32(in);
		a.ia.pia_width = u8(in) < 0xf0 ? 1U << (u8(in) % 4) :
		    val32(in);
		a.ia.pia_offset = val64(in);
		a.ia.pia_value = u64raw(in);
		a.ia.pia_status_offset = val64(in);
		a.ia.pia_status_mask = u64raw(in);
		break;
	case PCIUSER_IOC_INTR_UNMASK:
		a.iu.piu_vector = val32(in);
		break;
	case PCIUSER_IOC_DMAMEM_ALLOC:
		a.dm.pdm_size = val64(in);
		a.dm.pdm_align = val64(in);
		a.dm.pdm_boundary = val64(in);
		a.dm.pdm_maxaddr = u8(in) < 0xc0 ? 0 : val64(in);
		a.dm.pdm_maxsegs = val32(in);
		a.dm.pdm_flags = u8(in) < 0xf0 ? u8(in) % 8 : val32(in);
		break;
	case PCIUSER_IOC_DMAMEM_FREE:
	case PCIUSER_IOC_DMAMAP_DESTROY:
	case PCIUSER_IOC_DMAMAP_UNLOAD:
		a.di.pdi_id = pick_id(in);
		a.di.pdi_pad = u8(in) < 0xf0 ? 0 : val32(in);
		break;
	case PCIUSER_IOC_DMAMAP_CREATE:
		a.dc.pdc_maxsize = val64(in);
		a.dc.pdc_maxsegsz = val64(in);
		a.dc.pdc_boundary = val64(in);
		a.dc.pdc_maxaddr = u8(in) < 0xc0 ? 0 : val64(in);
		a.dc.pdc_nsegments = val32(in);
		a.dc.pdc_flags = u8(in) < 0xf0 ? u8(in) % 4 : val32(in);
		break;
	case PCIUSER_IOC_DMAMAP_LOAD:
		a.dl.pdl_map = pick_id(in);
		a.dl.pdl_mem = pick_id(in);
		a.dl.pdl_offset = val64(in);
		a.dl.pdl_len = val64(in);
		a.dl.pdl_maxsegs = val32(in);
		a.dl.pdl_flags = u8(in) < 0xf0 ? u8(in) % 4 : val32(in);
		/*
		 * The user's segment array: exactly pdl_maxsegs entries
		 * (at most PCIUSER_DMA_MAXSEGS, all the kernel may
		 * fill), so that ASan sees a copyout past it; or an
		 * address that faults.
		 */
		if (u8(in) < 0xe0) {
			nsegbuf = MIN(a.dl.pdl_maxsegs, PCIUSER_DMA_MAXSEGS);
			segs = malloc(nsegbuf * sizeof(*segs) + 1);
			a.dl.pdl_segs = (uint64_t)(uintptr_t)segs;
		} else
			a.dl.pdl_segs = u8(in);	/* faults */
		break;
	case PCIUSER_IOC_DMAMAP_SYNC:
		a.ds.pds_map = pick_id(in);
		a.ds.pds_ops = u8(in) < 0xf0 ? u8(in) % 16 : val32(in);
		a.ds.pds_offset = val64(in);
		a.ds.pds_len = val64(in);
		break;
	default:
		/* Raw bytes for the rest (FIONBIO, pci(4)'s info ioctls). */
		for (i = 0; i < len && i < 64; i++)
			a.raw[i] = u8(in);
		break;
	}
	error = h_ioctl(fp, cmd, &a);
	if (error == 0) {
		switch (cmd) {
		case PCIUSER_IOC_DMAMEM_ALLOC:
			remember_id(a.dm.pdm_id);
			cookies[ncookies++ % __arraycount(cookies)] =
			    a.dm.pdm_cookie;
			break;
		case PCIUSER_IOC_DMAMAP_CREATE:
			remember_id(a.dc.pdc_id);
			break;
		case PCIUSER_IOC_DMAMAP_LOAD:
			if (a.dl.pdl_nsegs > nsegbuf)
				panic("fuzz: DMAMAP_LOAD reports %u segments, "
				    "the user's array holds %u",
				    a.dl.pdl_nsegs, nsegbuf);
			break;
		}
	}
	free(segs);
}

static uint64_t
pick_mmap_off(struct in *in)
{
	uint8_t s = u8(in);

	if (s < 0x80)
		return PCIUSER_MMAP_BAR(s % 7) + (uint64_t)(u8(in) % 40) *
		    PAGE_SIZE;
	if (s < 0xc0 && ncookies > 0)
		return cookies[s % (ncookies < 4 ? ncookies : 4)] +
		    (uint64_t)(u8(in) % 8) * PAGE_SIZE;
	return val64(in);
}

static void
do_mmap(struct in *in)
{
	struct uvm_object *uo;
	uint64_t off;
	size_t size;
	int f, i, prot, flags;

	f = pick_fd(in);
	off = pick_mmap_off(in);
	size = (size_t)val64(in);
	prot = u8(in) % 8;
	flags = u8(in) < 0xe0 ? MAP_SHARED : u8(in) % 4;
	if (fds[f] == NULL)
		return;
	for (i = 0; i < NOBJ && objs[i] != NULL; i++)
		;
	if (i == NOBJ)
		return;
	/*
	 * As sys_mmap: the offset's page offset moves into the size,
	 * which is rounded to pages; a size past the user address space
	 * (2^47 on amd64) never reaches fo_mmap.
	 */
	size += off & PAGE_MASK;
	off = trunc_page(off);
	if (size > (1ULL << 47))
		return;
	size = round_page(size);
	if (h_mmap(fds[f], off, size, prot, flags, &uo) == 0) {
		if (uo == NULL)
			panic("fuzz: mmap succeeded without an object");
		objs[i] = uo;
		objoff[i] = off;
		objsize[i] = size;
	}
}

/* A fault on a page of a mapping, as uvm_fault would take it. */
static void
do_fault(struct in *in)
{
	int i = u8(in) % NOBJ;
	struct uvm_object *uo = objs[i];
	uint64_t pg = u32raw(in), off, pa;
	int prot = u8(in) % 8;

	if (uo == NULL || objsize[i] == 0)
		return;
	off = objoff[i] + (pg % (objsize[i] >> PAGE_SHIFT)) * PAGE_SIZE;
	/*
	 * Not the device pager udv_attach hands unclaimed files (the
	 * stand-in has no pgo_fault for it: that is pci(4)'s pcimmap).
	 */
	if (uo != NULL && uo->pgops->pgo_fault != NULL)
		(void)h_fault(uo, off, prot, &pa);
}

static void
drop_knote(int k)
{

	kns[k]->kn_fop->f_detach(kns[k]);
	free(kns[k]);
	kns[k] = NULL;
}

static void
do_close(int f)
{
	int k;

	if (fds[f] == NULL)
		return;
	/* As closef: the descriptor's knotes go first. */
	for (k = 0; k < NKN; k++)
		if (kns[k] != NULL && knfd[k] == f)
			drop_knote(k);
	(void)h_close(fds[f]);
	fds[f] = NULL;
}

static void
do_kqueue(struct in *in)
{
	struct knote *kn;
	int f = pick_fd(in), k;
	int filter = u8(in) < 0xe0 ? EVFILT_READ : EVFILT_WRITE;

	if (fds[f] == NULL)
		return;
	for (k = 0; k < NKN && kns[k] != NULL; k++)
		;
	if (k == NKN)
		return;
	kn = calloc(1, sizeof(*kn));
	kn->kn_filter = filter;
	if (fds[f]->f_ops->fo_kqfilter(fds[f], kn) != 0) {
		free(kn);
		return;
	}
	kns[k] = kn;
	knfd[k] = f;
}

static void
do_read(struct in *in)
{
	uint8_t s = u8(in);
	size_t len = s < 0xc0 ? s % 72 : (size_t)(val64(in) & 0xffff);
	int f = pick_fd(in);
	size_t got;
	void *buf;

	if (fds[f] == NULL)
		return;
	buf = u8(in) < 0xf0 ? malloc(len + 1) : NULL;
	(void)h_read(fds[f], buf, len, &got, 1);
	if (got > len)
		panic("fuzz: read returned %zu of %zu bytes", got, len);
	free(buf);
}

static void
window_open(int what)
{
	int f;

	if (what != H_GATE_DETACH)
		return;
	for (f = 0; f < NFD && fds[f] != NULL; f++)
		;
	if (f < NFD && h_open(FREAD | FWRITE, &fds[f]) == 0)
		panic("fuzz: open in pcidetach()'s window got a file");
}

static void
reset(void)
{

	memset(fds, 0, sizeof(fds));
	memset(objs, 0, sizeof(objs));
	memset(kns, 0, sizeof(kns));
	nids = ncookies = 0;
	h_reset();
	h_boot();
	(void)h_sysctl("dma_file_max", NULL, &cap_file);
	(void)h_sysctl("dma_total_max", NULL, &cap_total);
}

int	LLVMFuzzerInitialize(int *, char ***);
int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{

	/*
	 * A 16 MiB machine with 8 MiB that bus_dma can hand out: the
	 * default caps (2 and 4 MiB) are below the pool, so both EDQUOT
	 * and, once an input raises them by sysctl, bus_dma's ENOMEM are
	 * reached, while each allocation pci_user.c zeroes stays small.
	 * With the default 1 GiB, memset of random sizes up to the
	 * 128 MiB cap took most of each execution's time.
	 */
	physmem = 4096;
	h_nphys = 2048;
	h_boot();
	if (h_sysctl("dma_file_max", &cap_file, NULL) != 0 ||
	    h_sysctl("dma_total_max", &cap_total, NULL) != 0)
		panic("fuzz: no DMA caps");
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	struct stat st;
	char buf[512];
	uint64_t v;
	int f, k, i, steps = 0;

	reset();
	while (in.n > 0 && steps++ < 256) {
		switch (u8(&in) % 19) {
		case 0:
		case 1:
			f = pick_fd(&in);
			if (fds[f] == NULL)
				(void)h_open(u8(&in) < 0xe0 ? FREAD | FWRITE :
				    u8(&in) % 8, &fds[f]);
			break;
		case 2:
			do_close(pick_fd(&in));
			break;
		case 3:
		case 4:
		case 5:
		case 6:
		case 7:
			do_ioctl(&in);
			break;
		case 8:
			do_mmap(&in);
			break;
		case 9:
			i = u8(&in) % NOBJ;
			if (objs[i] != NULL && (objoff[i] >>
			    PCIUSER_MMAP_SHIFT < PCIUSER_DMAMEM_ID_MIN ||
			    (h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
			    PCI_COMMAND_MASTER_ENABLE) == 0)) {
				h_munmap(objs[i]);
				objs[i] = NULL;
			}
			break;
		case 10:
			do_fault(&in);
			break;
		case 11:
			do_read(&in);
			break;
		case 12:
			do_kqueue(&in);
			break;
		case 13:
			k = u8(&in) % NKN;
			if (kns[k] != NULL) {
				if (u8(&in) % 2)
					drop_knote(k);
				else
					(void)kns[k]->kn_fop->f_event(kns[k],
					    0);
			}
			break;
		case 14:
			f = pick_fd(&in);
			if (fds[f] != NULL) {
				if (u8(&in) % 2)
					(void)h_poll(fds[f], u8(&in));
				else
					(void)fds[f]->f_ops->fo_stat(fds[f],
					    &st);
			}
			break;
		case 15:
			/*
			 * A detach of the bus, sometimes with an open in
			 * the window pcidetach() sleeps in after
			 * pciuser_busdetach() (the slow driver's detach),
			 * kept open; or of one function's driver (a
			 * claim's pciuser child, or the slow driver).
			 */
			i = u8(&in);
			if (i & 0x80) {
				(void)h_driver_detach(i & 8 ? H_DEV_SLOW :
				    H_DEV_NIC, i % 2 ? DETACH_FORCE : 0);
				break;
			}
			if (i & 2) {
				(void)h_rescan(H_DEV_SLOW);
				h_gate_hook = window_open;
			}
			(void)h_detach(i % 2 ? DETACH_FORCE : 0);
			h_gate_hook = NULL;
			break;
		case 16:
			h_nic_raise(u8(&in) % H_MSIX_NVEC);
			break;
		case 17:
			h_pmap_fail = u8(&in) % 3;
			h_kauth_deny = u8(&in) % 8 == 0;
			break;
		case 18:
			v = val64(&in);
			(void)h_sysctl(u8(&in) % 2 ? "dma_file_max" :
			    "dma_total_max", NULL, &v);
			break;
		}
	}

	/* Drop whatever is left, as exit(2) would, then check. */
	for (k = 0; k < NKN; k++)
		if (kns[k] != NULL)
			drop_knote(k);
	for (f = 0; f < NFD; f++)
		do_close(f);
	for (i = 0; i < NOBJ; i++)
		if (objs[i] != NULL)
			h_munmap(objs[i]);
	h_pmap_fail = 0;
	h_kauth_deny = 0;
	if (h_shutdown_check(buf, sizeof(buf)))
		panic("fuzz: left behind:%s", buf);
	if (h_phys_pages != 0 || h_leaked_pages != 0)
		panic("fuzz: %ld DMA pages left allocated (%ld by EFBIG)",
		    h_phys_pages, h_leaked_pages);
	if (h_sysctl("dma_total", &v, NULL) != 0 || v != 0)
		panic("fuzz: DMA charge %ju left", (uintmax_t)v);
	if (h_freed_while_master != 0)
		panic("fuzz: DMA memory freed while the device was mastering");
	return 0;
}
