/*
 * cases.c: ATF-style test cases of sys/dev/pci/pci_user.c, run on the
 * stand-in kernel of kstub.c.  One case per ioctl and per mmap path,
 * the lifetime cases (close with DMA live, detach during use, two
 * openers racing, an open or a claim racing a driver's sleeping detach
 * or attach, the claim's pciuser autoconf child) and one per defect of
 * issue 24 (N1-N4).
 *
 *	harness -l		list the cases
 *	harness NAME		run one case in this process
 *	harness -a		run every case, each in a child process
 *	harness -t		print the kernel's answers to a table of
 *				DMA sync and allocation requests
 *
 * A case passes when it returns, the stand-in kernel did not panic and
 * nothing is left behind (h_shutdown_check).  Exit status 0 is a pass.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kstub.h"
#include "harness.h"
#include <dev/pci/pciuserio.h>

static const char *curcase;
static int expect_leaks;	/* the case leaks DMA memory on purpose */

#define	REQUIRE(e) do {							\
	if (!(e)) {							\
		fprintf(stderr, "FAIL %s: %s:%d: %s\n", curcase,	\
		    __FILE__, __LINE__, #e);				\
		exit(1);						\
	}								\
} while (0)
#define	REQUIRE_EQ(a, b) do {						\
	long long _a = (long long)(a), _b = (long long)(b);		\
	if (_a != _b) {							\
		fprintf(stderr, "FAIL %s: %s:%d: %s == %lld, "		\
		    "expected %s == %lld\n", curcase, __FILE__,		\
		    __LINE__, #a, _a, #b, _b);				\
		exit(1);						\
	}								\
} while (0)

static struct file *
xopen(void)
{
	struct file *fp;

	REQUIRE_EQ(h_open(FREAD | FWRITE, &fp), 0);
	return fp;
}

static int
claim_dev(struct file *fp, int dev, struct pciuser_claim *uc)
{
	struct pciuser_claim c;

	if (uc == NULL)
		uc = &c;
	memset(uc, 0, sizeof(*uc));
	uc->puc_bus = 0;
	uc->puc_device = (uint32_t)dev;
	uc->puc_function = 0;
	return h_ioctl(fp, PCIUSER_IOC_CLAIM, uc);
}

static int
claim(struct file *fp, struct pciuser_claim *uc)
{

	return claim_dev(fp, H_DEV_NIC, uc);
}

static bool
driver_is(int dev, const char *name)
{
	const char *d = h_driver_of(dev);

	return d == NULL ? name == NULL : name != NULL && strcmp(d, name) == 0;
}

static struct file *
xclaimed(void)
{
	struct file *fp = xopen();

	REQUIRE_EQ(claim(fp, NULL), 0);
	return fp;
}

static int
cfgw(struct file *fp, uint32_t reg, uint32_t val)
{
	struct pciuser_cfgreg r = { reg, val };

	return h_ioctl(fp, PCIUSER_IOC_CFGWRITE, &r);
}

static uint32_t
cfgr(struct file *fp, uint32_t reg)
{
	struct pciuser_cfgreg r = { reg, 0 };

	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_CFGREAD, &r), 0);
	return r.pcr_val;
}

static int
dmamem(struct file *fp, uint64_t size, uint64_t boundary, uint32_t maxsegs,
    struct pciuser_dmamem_alloc *out)
{
	struct pciuser_dmamem_alloc a;

	memset(&a, 0, sizeof(a));
	a.pdm_size = size;
	a.pdm_boundary = boundary;
	a.pdm_maxsegs = maxsegs;
	if (out == NULL)
		out = &a;
	else
		*out = a;
	return h_ioctl(fp, PCIUSER_IOC_DMAMEM_ALLOC, out);
}

static int
dmamap(struct file *fp, uint64_t maxsize, uint32_t nsegs, uint32_t *id)
{
	struct pciuser_dmamap_create c;
	int error;

	memset(&c, 0, sizeof(c));
	c.pdc_maxsize = maxsize;
	c.pdc_maxsegsz = maxsize;
	c.pdc_nsegments = nsegs;
	error = h_ioctl(fp, PCIUSER_IOC_DMAMAP_CREATE, &c);
	*id = c.pdc_id;
	return error;
}

static struct pciuser_dma_seg segbuf[PCIUSER_DMA_MAXSEGS];

static int
load(struct file *fp, uint32_t map, uint32_t mem, uint64_t off, uint64_t len)
{
	struct pciuser_dmamap_load l;

	memset(&l, 0, sizeof(l));
	l.pdl_map = map;
	l.pdl_mem = mem;
	l.pdl_offset = off;
	l.pdl_len = len;
	l.pdl_segs = (uint64_t)(uintptr_t)segbuf;
	l.pdl_maxsegs = PCIUSER_DMA_MAXSEGS;
	return h_ioctl(fp, PCIUSER_IOC_DMAMAP_LOAD, &l);
}

/*
 * The setup most DMA cases open with: a claimed file, DMA memory of
 * pages pages, a map of as many segments and the whole memory loaded.
 */
static struct file *
xdmaloaded(uint64_t pages, struct pciuser_dmamem_alloc *a, uint32_t *map)
{
	struct file *fp = xclaimed();

	REQUIRE_EQ(dmamem(fp, pages * PAGE_SIZE, 0, 0, a), 0);
	REQUIRE_EQ(dmamap(fp, pages * PAGE_SIZE, (uint32_t)pages, map), 0);
	REQUIRE_EQ(load(fp, *map, a->pdm_id, 0, pages * PAGE_SIZE), 0);
	return fp;
}

static int
sync_ops(struct file *fp, uint32_t map, uint32_t ops, uint64_t off,
    uint64_t len)
{
	struct pciuser_dmamap_sync s = { map, ops, off, len };

	return h_ioctl(fp, PCIUSER_IOC_DMAMAP_SYNC, &s);
}

static int
id_ioctl(struct file *fp, unsigned long cmd, uint32_t id)
{
	struct pciuser_dma_id d = { id, 0 };

	return h_ioctl(fp, cmd, &d);
}

static int
intr(struct file *fp, uint32_t type, uint32_t count, uint32_t *got)
{
	struct pciuser_intr_setup s = { type, count, 0, 0 };
	int error;

	error = h_ioctl(fp, PCIUSER_IOC_INTR_ESTABLISH, &s);
	if (got)
		*got = s.pis_count;
	return error;
}

static uint64_t
dma_total(void)
{
	uint64_t v = ~0ULL;

	REQUIRE_EQ(h_sysctl("dma_total", &v, NULL), 0);
	return v;
}

/*
 * Cases.
 */

static void
case_open_close(void)
{
	struct file *fp = xopen();
	struct file *ro;

	REQUIRE_EQ(h_open(FREAD, &ro), 0);
	/* Unclaimed: pciuser ioctls but CLAIM say ENXIO. */
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_DISESTABLISH, NULL), ENXIO);
	REQUIRE_EQ(h_close(ro), 0);
	REQUIRE_EQ(h_close(fp), 0);
}

static void
case_ioc_claim(void)
{
	struct pciuser_claim uc;
	struct file *fp = xopen(), *fp2 = xopen(), *ro;
	uint64_t total;

	REQUIRE_EQ(claim(fp, &uc), 0);
	REQUIRE_EQ(uc.puc_version, PCIUSER_ABI_VERSION);
	REQUIRE_EQ(uc.puc_id, 0x10d38086);
	REQUIRE_EQ(uc.puc_cfgsize, 4096);
	REQUIRE(uc.puc_caps & PCIUSER_CAP_MSI);
	REQUIRE(uc.puc_caps & PCIUSER_CAP_MSIX);
	REQUIRE_EQ(uc.puc_msix_count, H_MSIX_NVEC);
	REQUIRE(uc.puc_bars[0].pub_flags & PCIUSER_BAR_MMAP);
	REQUIRE(uc.puc_bars[0].pub_flags & PCIUSER_BAR_MEM64);
	REQUIRE_EQ(uc.puc_bars[0].pub_base, H_BAR0_BASE);
	REQUIRE_EQ(uc.puc_bars[0].pub_size, H_BAR0_SIZE);
	REQUIRE_EQ(uc.puc_bars[1].pub_flags, 0);
	REQUIRE(uc.puc_bars[2].pub_flags & PCIUSER_BAR_IO);
	REQUIRE_EQ(uc.puc_bars[3].pub_msix_table, H_MSIX_TABLE);
	REQUIRE_EQ(uc.puc_bars[3].pub_msix_table_size, H_MSIX_NVEC * 16);
	REQUIRE_EQ(uc.puc_bars[3].pub_msix_pba, H_MSIX_PBA);
	/* Sized with decoding off, left with bus mastering off. */
	REQUIRE_EQ(h_sizing_with_decode, 0);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_MASTER_ENABLE, 0);
	/* Once per file, once per function; no kernel-owned function. */
	REQUIRE_EQ(claim(fp, NULL), EBUSY);
	REQUIRE_EQ(claim(fp2, NULL), EBUSY);
	uc.puc_device = H_DEV_VICTIM;
	REQUIRE_EQ(h_ioctl(fp2, PCIUSER_IOC_CLAIM, &uc), EBUSY);
	uc.puc_device = 9;
	REQUIRE_EQ(h_ioctl(fp2, PCIUSER_IOC_CLAIM, &uc), ENXIO);
	uc.puc_device = H_DEV_NIC;
	uc.puc_flags = 1;
	REQUIRE_EQ(h_ioctl(fp2, PCIUSER_IOC_CLAIM, &uc), EINVAL);
	uc.puc_flags = 0;
	uc.puc_bus = 1;
	REQUIRE_EQ(h_ioctl(fp2, PCIUSER_IOC_CLAIM, &uc), EINVAL);
	uc.puc_bus = 0;
	uc.puc_device = 32;
	REQUIRE_EQ(h_ioctl(fp2, PCIUSER_IOC_CLAIM, &uc), EINVAL);
	REQUIRE_EQ(h_open(FREAD, &ro), 0);
	REQUIRE_EQ(claim(ro, NULL), EBADF);
	REQUIRE_EQ(h_close(ro), 0);
	REQUIRE_EQ(h_close(fp), 0);
	/* The function is free again; kauth decides. */
	h_kauth_deny = 1;
	REQUIRE_EQ(claim(fp2, NULL), EPERM);
	h_kauth_deny = 0;
	REQUIRE_EQ(claim(fp2, NULL), 0);
	total = dma_total();
	REQUIRE_EQ(total, 0);
	REQUIRE_EQ(h_close(fp2), 0);
}

static void
case_ioc_cfgread(void)
{
	struct file *fp = xclaimed();
	struct pciuser_cfgreg r = { 2, 0 };

	REQUIRE_EQ(cfgr(fp, PCI_ID_REG), 0x10d38086);
	REQUIRE_EQ(cfgr(fp, 0x100), 0x00010001);
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_CFGREAD, &r), EINVAL);
	r.pcr_reg = 4096;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_CFGREAD, &r), EINVAL);
	REQUIRE_EQ(h_close(fp), 0);
}

static void
case_ioc_cfgwrite(void)
{
	struct file *fp = xclaimed();

	/* Command register: allowlisted. */
	REQUIRE_EQ(cfgw(fp, PCI_COMMAND_STATUS_REG, 0x6), 0);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) & 0x7, 0x6);
	/* BARs, MSI, MSI-X: the kernel's. */
	REQUIRE_EQ(cfgw(fp, 0x10, 0xffffffff), EPERM);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, 0x10), (uint32_t)H_BAR0_BASE | 4);
	REQUIRE_EQ(cfgw(fp, 0xa0, 0xffffffff), EPERM);
	REQUIRE_EQ(cfgw(fp, 0x50, 0xffffffff), EPERM);
	/* Vendor-specific capability body and AER: the device's. */
	REQUIRE_EQ(cfgw(fp, 0xb4, 0x12345678), 0);
	REQUIRE_EQ(cfgw(fp, 0x104, 0), 0);
	REQUIRE_EQ(cfgw(fp, 0x06, 0), EINVAL);
	REQUIRE_EQ(h_close(fp), 0);
}

static void
case_ioc_pio(void)
{
	struct file *fp = xclaimed();
	struct pciuser_pio p;

	/* Reserved at claim, mapped into kernel VA at the first PIO. */
	REQUIRE_EQ(h_bar_kva(), 0);
	memset(&p, 0, sizeof(p));
	p.pio_bar = 0;
	p.pio_width = 4;
	p.pio_offset = 0x100;
	p.pio_value = 0xdeadbeef;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_WRITE, &p), 0);
	REQUIRE_EQ(h_nic_bar_read4(0, 0x100), 0xdeadbeef);
	REQUIRE_EQ(h_bar_kva(), H_BAR0_SIZE);
	p.pio_value = 0;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), 0);
	REQUIRE_EQ(p.pio_value, 0xdeadbeef);
	p.pio_width = 8;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), 0);
	p.pio_width = 3;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), EINVAL);
	p.pio_width = 4;
	p.pio_offset = H_BAR0_SIZE - 2;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), EINVAL);
	p.pio_offset = ~0ULL - 3;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), EINVAL);
	/* The I/O BAR: no 8-byte access. */
	p.pio_bar = 2;
	p.pio_offset = 4;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_WRITE, &p), 0);
	p.pio_width = 8;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), EINVAL);
	/* BAR1 is the upper half of BAR0; BAR6 does not exist. */
	p.pio_width = 4;
	p.pio_bar = 1;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), ENXIO);
	p.pio_bar = 6;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), EINVAL);
	/* BAR3: the MSI-X table and PBA are the kernel's; the rest not. */
	p.pio_bar = 3;
	p.pio_offset = H_MSIX_TABLE + 16;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_WRITE, &p), EPERM);
	p.pio_offset = H_MSIX_PBA;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), EPERM);
	p.pio_offset = 0x10;
	p.pio_value = 0x55aa;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_WRITE, &p), 0);
	REQUIRE_EQ(h_nic_bar_read4(3, 0x10), 0x55aa);
	p.pio_offset = H_MSIX_TABLE + H_MSIX_NVEC * 16;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_WRITE, &p), 0);
	p.pio_offset = H_BAR3_SIZE - 4;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_PIO_READ, &p), 0);
	/* Both sides of the MSI-X table now; the table is never ours. */
	REQUIRE_EQ(h_bar_kva(), H_BAR0_SIZE + H_BAR3_SIZE - H_MSIX_NVEC * 16);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_bar_kva(), 0);
}

static void
case_ioc_intr_msi(void)
{
	struct file *fp = xclaimed();
	struct pciuser_intr_event ev[4];
	struct knote *kn;
	uint32_t got;
	size_t n;

	/* Unestablished: end of file. */
	REQUIRE_EQ(h_read(fp, ev, sizeof(ev), &n, 1), 0);
	REQUIRE_EQ(n, 0);
	REQUIRE_EQ(intr(fp, PCIUSER_INTR_MSI, 8, &got), 0);
	REQUIRE_EQ(got, H_MSI_NVEC);
	REQUIRE_EQ(intr(fp, PCIUSER_INTR_MSI, 1, NULL), EBUSY);
	REQUIRE_EQ(h_kqueue(fp, &kn), 0);
	REQUIRE_EQ(h_read(fp, ev, sizeof(ev), &n, 1), EWOULDBLOCK);
	REQUIRE_EQ(h_poll(fp, POLLIN), 0);
	h_nic_raise(1);
	h_nic_raise(1);
	h_nic_raise(3);
	REQUIRE(h_softints_run >= 1);
	REQUIRE(kn->kn_fired);
	REQUIRE_EQ(h_poll(fp, POLLIN), POLLIN);
	/* A read whose copyout fails loses nothing. */
	REQUIRE_EQ(h_read(fp, NULL, sizeof(ev), &n, 1), EFAULT);
	REQUIRE_EQ(h_read(fp, ev, sizeof(ev), &n, 1), 0);
	REQUIRE_EQ(n, 2 * sizeof(ev[0]));
	REQUIRE_EQ(ev[0].pie_vector, 1);
	REQUIRE_EQ(ev[0].pie_count, 2);
	REQUIRE_EQ(ev[1].pie_vector, 3);
	REQUIRE_EQ(h_read(fp, ev, 4, &n, 1), EINVAL);
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_DISESTABLISH, NULL), 0);
	REQUIRE_EQ(h_poll(fp, POLLIN), POLLIN | POLLHUP);
	REQUIRE_EQ(h_read(fp, ev, sizeof(ev), &n, 0), 0);
	REQUIRE_EQ(n, 0);
	h_kqueue_drop(kn);
	REQUIRE_EQ(h_close(fp), 0);
}

/* N1: claiming must leave the MSI-X table to msipic. */
static void
case_n1_msix_establish(void)
{
	struct file *fp = xclaimed();
	struct pciuser_intr_event ev[8];
	struct uvm_object *uo;
	uint32_t got;
	size_t n;

	REQUIRE_EQ(intr(fp, PCIUSER_INTR_MSIX, 8, &got), 0);
	REQUIRE_EQ(got, H_MSIX_NVEC);
	REQUIRE_EQ(h_msix_maps, 1);
	h_nic_raise(7);
	REQUIRE_EQ(h_read(fp, ev, sizeof(ev), &n, 1), 0);
	REQUIRE_EQ(n, sizeof(ev[0]));
	REQUIRE_EQ(ev[0].pie_vector, 7);
	/* The BAR around the table is still the claim's. */
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(3), PAGE_SIZE,
	    VM_PROT_READ, MAP_SHARED, &uo), 0);
	h_munmap(uo);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(3) + H_MSIX_TABLE, PAGE_SIZE,
	    VM_PROT_READ, MAP_SHARED, &uo), EPERM);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_msix_maps, 0);
}

static void
case_ioc_intr_intx(void)
{
	struct file *fp = xclaimed();
	struct pciuser_intr_unmask u = { 0, 0 };
	struct pciuser_intr_ack a;
	struct pciuser_intr_event ev[1];
	size_t n;

	REQUIRE_EQ(intr(fp, PCIUSER_INTR_INTX, 2, NULL), EINVAL);
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_UNMASK, &u), ENXIO);
	REQUIRE_EQ(intr(fp, PCIUSER_INTR_INTX, 1, NULL), 0);
	h_nic_raise(0);
	/* The handler masked INTx in the command register. */
	REQUIRE(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_INTERRUPT_DISABLE);
	REQUIRE_EQ(h_read(fp, ev, sizeof(ev), &n, 1), 0);
	REQUIRE_EQ(n, sizeof(ev[0]));
	/* While established, the process cannot unmask it by hand. */
	REQUIRE_EQ(cfgw(fp, PCI_COMMAND_STATUS_REG, 0x6), 0);
	REQUIRE(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_INTERRUPT_DISABLE);
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_UNMASK, &u), 0);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_INTERRUPT_DISABLE, 0);
	u.piu_vector = 1;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_UNMASK, &u), EINVAL);
	/* SETACK only while nothing is established. */
	memset(&a, 0, sizeof(a));
	a.pia_flags = PCIUSER_ACK_ENABLE;
	a.pia_width = 4;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_SETACK, &a), EBUSY);
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_DISESTABLISH, NULL), 0);
	a.pia_offset = 0x20;
	a.pia_status_offset = 0x24;
	a.pia_status_mask = 1;
	a.pia_flags |= PCIUSER_ACK_STATUS;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_SETACK, &a), 0);
	a.pia_bar = 3;
	a.pia_offset = H_MSIX_TABLE;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_SETACK, &a), EPERM);
	a.pia_width = 8;
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_SETACK, &a), EINVAL);
	REQUIRE_EQ(h_close(fp), 0);
}

static void
case_ioc_dmamem(void)
{
	struct file *fp = xclaimed();
	struct pciuser_dmamem_alloc a;

	REQUIRE_EQ(dmamem(fp, 3 * PAGE_SIZE + 1, 0, 0, &a), 0);
	REQUIRE(a.pdm_id >= PCIUSER_DMAMEM_ID_MIN);
	REQUIRE_EQ(a.pdm_cookie, (uint64_t)a.pdm_id << PCIUSER_MMAP_SHIFT);
	/* The pages and the kernel memory describing them are charged. */
	REQUIRE(dma_total() > 4 * PAGE_SIZE && dma_total() < 5 * PAGE_SIZE);
	REQUIRE_EQ(h_phys_pages, 4);
	REQUIRE_EQ(dmamem(fp, 0, 0, 0, NULL), EINVAL);
	REQUIRE_EQ(dmamem(fp, PAGE_SIZE, 100, 0, NULL), EINVAL);
	REQUIRE_EQ(dmamem(fp, PAGE_SIZE, 0, PCIUSER_DMA_MAXSEGS + 1, NULL),
	    EINVAL);
	REQUIRE_EQ(dmamem(fp, 4 * PAGE_SIZE, PAGE_SIZE, 1, NULL), EINVAL);
	REQUIRE_EQ(dmamem(fp, 8 * PAGE_SIZE, 0, 1, NULL), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), ENOENT);
	REQUIRE_EQ(h_phys_pages, 8);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_phys_pages, 0);
	REQUIRE_EQ(dma_total(), 0);
}

static void
case_ioc_dmamap(void)
{
	struct file *fp = xclaimed();
	struct pciuser_dmamem_alloc a;
	uint32_t map, map1, scratch;

	REQUIRE_EQ(dmamem(fp, 4 * PAGE_SIZE, 0, 0, &a), 0);
	REQUIRE_EQ(dmamap(fp, 4 * PAGE_SIZE, 4, &map), 0);
	REQUIRE_EQ(dmamap(fp, 4 * PAGE_SIZE, 1, &map1), 0);
	REQUIRE_EQ(dmamap(fp, 0, 1, &scratch), EINVAL);
	REQUIRE_EQ(load(fp, map, a.pdm_id, 0, 4 * PAGE_SIZE), 0);
	REQUIRE(segbuf[0].ds_addr >= 0x10000000ULL);
	REQUIRE_EQ(load(fp, map, a.pdm_id, 0, PAGE_SIZE), EBUSY);
	/* Scattered pages do not fit one segment. */
	REQUIRE_EQ(load(fp, map1, a.pdm_id, 0, 2 * PAGE_SIZE), EFBIG);
	REQUIRE_EQ(load(fp, map1, a.pdm_id, PAGE_SIZE, 4 * PAGE_SIZE),
	    EINVAL);
	REQUIRE_EQ(load(fp, map1, a.pdm_id + 1, 0, PAGE_SIZE), ENOENT);
	/* Loaded memory cannot be freed. */
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), EBUSY);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMAP_UNLOAD, map), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMAP_DESTROY, map), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMAP_DESTROY, map), ENOENT);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), 0);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(dma_total(), 0);
}

static void
case_ioc_dmamap_sync(void)
{
	struct file *fp = xclaimed();
	struct pciuser_dmamem_alloc a;
	uint32_t map;

	REQUIRE_EQ(dmamem(fp, 2 * PAGE_SIZE, 0, 0, &a), 0);
	REQUIRE_EQ(dmamap(fp, 2 * PAGE_SIZE, 2, &map), 0);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_PREWRITE, 0, 16), EINVAL);
	REQUIRE_EQ(load(fp, map, a.pdm_id, 0, 2 * PAGE_SIZE), 0);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_PREWRITE |
	    PCIUSER_SYNC_PREREAD, 0, 2 * PAGE_SIZE), 0);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_POSTREAD, 16, 32), 0);
	REQUIRE_EQ(sync_ops(fp, map, 0, 0, 16), EINVAL);
	REQUIRE_EQ(sync_ops(fp, map, 0x10, 0, 16), EINVAL);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_POSTREAD, 2 * PAGE_SIZE,
	    1), EINVAL);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_POSTREAD, 16,
	    2 * PAGE_SIZE), EINVAL);
	REQUIRE_EQ(sync_ops(fp, map + 1, PCIUSER_SYNC_POSTREAD, 0, 1),
	    ENOENT);
	REQUIRE_EQ(h_close(fp), 0);
}

/* N2: PRE and POST together panic x86; refuse them. */
static void
case_n2_sync_pre_post(void)
{
	struct file *fp;
	struct pciuser_dmamem_alloc a;
	uint32_t map;

	fp = xdmaloaded(1, &a, &map);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_PREREAD |
	    PCIUSER_SYNC_POSTREAD, 0, PAGE_SIZE), EINVAL);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_PREWRITE |
	    PCIUSER_SYNC_POSTWRITE, 0, PAGE_SIZE), EINVAL);
	REQUIRE_EQ(sync_ops(fp, map, 0xf, 0, PAGE_SIZE), EINVAL);
	REQUIRE_EQ(h_close(fp), 0);
}

/* N2: a zero length panics the ports that check it; refuse it. */
static void
case_n2_sync_zero_length(void)
{
	struct file *fp;
	struct pciuser_dmamem_alloc a;
	uint32_t map;

	fp = xdmaloaded(1, &a, &map);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_PREWRITE, 0, 0), EINVAL);
	REQUIRE_EQ(sync_ops(fp, map, PCIUSER_SYNC_POSTREAD, 100, 0), EINVAL);
	REQUIRE_EQ(h_close(fp), 0);
}

/* N3: pci(4)'s own config write must not pass on a claimed file. */
static void
case_n3_bdf_cfgwrite_claimed(void)
{
	struct file *fp = xclaimed(), *other;
	struct pciio_bdf_cfgreg b;
	uint32_t bar = h_cfg_read(H_DEV_VICTIM, 0x10);

	memset(&b, 0, sizeof(b));
	b.bus = 0;
	b.device = H_DEV_VICTIM;
	b.cfgreg.reg = 0x10;
	b.cfgreg.val = 0xdead0000;
	REQUIRE_EQ(h_ioctl(fp, PCI_IOC_BDF_CFGWRITE, &b), EPERM);
	REQUIRE_EQ(h_cfg_read(H_DEV_VICTIM, 0x10), bar);
	b.device = H_DEV_NIC;
	REQUIRE_EQ(h_ioctl(fp, PCI_IOC_BDF_CFGWRITE, &b), EPERM);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, 0x10), (uint32_t)H_BAR0_BASE | 4);
	/* Reading is what pcictl(8) does; it still works. */
	b.device = H_DEV_VICTIM;
	REQUIRE_EQ(h_ioctl(fp, PCI_IOC_BDF_CFGREAD, &b), 0);
	REQUIRE_EQ(b.cfgreg.val, bar);
	/* Nor from another, unclaimed file, to the claimed function. */
	other = xopen();
	b.device = H_DEV_NIC;
	b.cfgreg.val = 0xdead0000;
	REQUIRE_EQ(h_ioctl(other, PCI_IOC_BDF_CFGWRITE, &b), EBUSY);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, 0x10), (uint32_t)H_BAR0_BASE | 4);
	REQUIRE_EQ(h_close(fp), 0);
	/* Once released, pci(4) writes it as before. */
	b.cfgreg.reg = 0x40;
	REQUIRE_EQ(h_ioctl(other, PCI_IOC_BDF_CFGWRITE, &b), 0);
	REQUIRE_EQ(h_close(other), 0);
}

/* pci(4) ioctls on an unclaimed file are as before. */
static void
case_pci_ioctls_unclaimed(void)
{
	struct file *fp = xopen();
	struct pciio_bdf_cfgreg b;

	memset(&b, 0, sizeof(b));
	b.device = H_DEV_VICTIM;
	b.cfgreg.reg = PCI_ID_REG;
	REQUIRE_EQ(h_ioctl(fp, PCI_IOC_BDF_CFGREAD, &b), 0);
	REQUIRE_EQ(b.cfgreg.val, 0x29228086);
	REQUIRE_EQ(h_ioctl(fp, _IO('Z', 1), NULL), ENOTTY);
	REQUIRE_EQ(h_close(fp), 0);
}

/* N4: EFBIG from bus_dma must not leak pages with the charge refunded. */
static void
case_n4_efbig_leak(void)
{
	struct file *fp = xclaimed();
	int i, error;

	for (i = 0; i < 64; i++) {
		error = dmamem(fp, 16 * PAGE_SIZE, PAGE_SIZE, 2, NULL);
		REQUIRE(error != 0);
		REQUIRE(error != EFBIG);
	}
	REQUIRE_EQ(h_leaked_pages, 0);
	REQUIRE_EQ(h_phys_pages, 0);
	REQUIRE_EQ(dma_total(), 0);
	/* Enough segments for the boundary: allowed. */
	REQUIRE_EQ(dmamem(fp, 16 * PAGE_SIZE, 4 * PAGE_SIZE, 5, NULL), 0);
	REQUIRE_EQ(dmamem(fp, 16 * PAGE_SIZE, PAGE_SIZE, 0, NULL), 0);
	REQUIRE_EQ(h_leaked_pages, 0);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_phys_pages, 0);
}

static void
case_caps_edquot(void)
{
	struct file *fp = xclaimed(), *fp2 = xopen();
	uint64_t cap = 9 * PAGE_SIZE, old;
	uint32_t map;

	REQUIRE_EQ(h_sysctl("dma_file_max", &old, &cap), 0);
	REQUIRE_EQ(dmamem(fp, 8 * PAGE_SIZE, 0, 0, NULL), 0);
	REQUIRE_EQ(dmamem(fp, PAGE_SIZE, 0, 0, NULL), EDQUOT);
	REQUIRE_EQ(dmamap(fp, PAGE_SIZE, 1, &map), EDQUOT);
	REQUIRE_EQ(h_close(fp), 0);
	/*
	 * Kernel metadata counts: a one-page map with 1024 segments holds
	 * 16 KiB of segment array, more than its page.
	 */
	fp = xclaimed();
	cap = 3 * PAGE_SIZE;
	REQUIRE_EQ(h_sysctl("dma_file_max", NULL, &cap), 0);
	REQUIRE_EQ(dmamap(fp, PAGE_SIZE, 1, &map), 0);
	REQUIRE_EQ(dmamap(fp, PAGE_SIZE, PCIUSER_DMA_MAXSEGS, &map), EDQUOT);
	REQUIRE_EQ(h_sysctl("dma_total", NULL, &cap), EPERM);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_close(fp2), 0);
	REQUIRE_EQ(dma_total(), 0);
}

static void
case_mmap_bar(void)
{
	struct file *fp = xclaimed();
	struct uvm_object *uo, *uo2;
	uint64_t pa;

	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(0), H_BAR0_SIZE,
	    VM_PROT_READ | VM_PROT_WRITE, MAP_SHARED, &uo), 0);
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0) + 2 * PAGE_SIZE,
	    VM_PROT_READ, &pa), 0);
	REQUIRE_EQ(pa, H_BAR0_BASE + 2 * PAGE_SIZE);
	/* pmap_enter out of memory: try again. */
	h_pmap_fail = 1;
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0), VM_PROT_READ, &pa),
	    ERESTART);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(0), PAGE_SIZE, VM_PROT_READ,
	    MAP_PRIVATE, &uo2), EINVAL);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(0), H_BAR0_SIZE + PAGE_SIZE,
	    VM_PROT_READ, MAP_SHARED, &uo2), EINVAL);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(2), PAGE_SIZE, VM_PROT_READ,
	    MAP_SHARED, &uo2), EINVAL);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(3) + H_MSIX_PBA, PAGE_SIZE,
	    VM_PROT_READ, MAP_SHARED, &uo2), EPERM);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(0), 0, VM_PROT_READ,
	    MAP_SHARED, &uo2), EINVAL);
	/* The mapping outlives the file: the claim lasts until munmap. */
	REQUIRE_EQ(h_close(fp), 0);
	fp = xopen();
	REQUIRE_EQ(claim(fp, NULL), EBUSY);
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0), VM_PROT_READ, &pa), 0);
	h_munmap(uo);
	REQUIRE_EQ(claim(fp, NULL), 0);
	REQUIRE_EQ(h_close(fp), 0);
}

static void
case_mmap_dmamem(void)
{
	struct file *fp = xclaimed();
	struct pciuser_dmamem_alloc a;
	struct uvm_object *uo, *uo2;
	uint64_t pa;
	uint32_t map;

	REQUIRE_EQ(dmamem(fp, 2 * PAGE_SIZE, 0, 1, &a), 0);
	REQUIRE_EQ(dmamap(fp, 2 * PAGE_SIZE, 1, &map), 0);
	REQUIRE_EQ(load(fp, map, a.pdm_id, 0, 2 * PAGE_SIZE), 0);
	REQUIRE_EQ(h_mmap(fp, a.pdm_cookie, 2 * PAGE_SIZE,
	    VM_PROT_READ | VM_PROT_WRITE, MAP_SHARED, &uo), 0);
	REQUIRE_EQ(h_fault(uo, a.pdm_cookie + PAGE_SIZE, VM_PROT_READ, &pa),
	    0);
	REQUIRE_EQ(pa, segbuf[0].ds_addr + PAGE_SIZE);
	REQUIRE_EQ(h_mmap(fp, a.pdm_cookie, 3 * PAGE_SIZE, VM_PROT_READ,
	    MAP_SHARED, &uo2), EINVAL);
	REQUIRE_EQ(h_mmap(fp, a.pdm_cookie + (1ULL << PCIUSER_MMAP_SHIFT),
	    PAGE_SIZE, VM_PROT_READ, MAP_SHARED, &uo2), EINVAL);
	/* Freed while mapped: the pages stay until munmap. */
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMAP_DESTROY, map), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), 0);
	REQUIRE_EQ(h_phys_pages, 2);
	REQUIRE_EQ(h_fault(uo, a.pdm_cookie, VM_PROT_READ, &pa), 0);
	REQUIRE(dma_total() > 2 * PAGE_SIZE && dma_total() < 3 * PAGE_SIZE);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_phys_pages, 2);
	h_munmap(uo);
	REQUIRE_EQ(h_phys_pages, 0);
	REQUIRE_EQ(dma_total(), 0);
}

static void
case_mmap_unclaimed(void)
{
	struct file *fp = xopen();
	struct uvm_object *uo;
	static const int asked[] = { 0, MAP_PRIVATE };
	off_t off = 0xfe000000;
	int flags, advice, maxprot;
	size_t i;

	REQUIRE_EQ(h_mmap(fp, 0xfe000000, PAGE_SIZE, VM_PROT_READ,
	    MAP_SHARED, &uo), 0);
	h_munmap(uo);
	/*
	 * As vn_mmap() of the device node before pciuser: private (or
	 * neither flag) is mapped shared, not refused.
	 */
	for (i = 0; i < __arraycount(asked); i++) {
		flags = asked[i];
		REQUIRE_EQ(fp->f_ops->fo_mmap(fp, &off, PAGE_SIZE,
		    VM_PROT_READ, &flags, &advice, &uo, &maxprot), 0);
		REQUIRE_EQ(flags, MAP_SHARED);
		h_munmap(uo);
	}
	REQUIRE_EQ(h_close(fp), 0);
}

/* Close with DMA running: bus mastering off first, then everything goes. */
static void
case_close_dma_live(void)
{
	struct file *fp;
	struct pciuser_dmamem_alloc a;
	uint32_t map;

	fp = xdmaloaded(4, &a, &map);
	REQUIRE_EQ(intr(fp, PCIUSER_INTR_MSI, 1, NULL), 0);
	REQUIRE_EQ(cfgw(fp, PCI_COMMAND_STATUS_REG, 0x6), 0);
	REQUIRE(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_MASTER_ENABLE);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_MASTER_ENABLE, 0);
	REQUIRE_EQ(h_freed_while_master, 0);
	REQUIRE_EQ(h_phys_pages, 0);
	REQUIRE_EQ(dma_total(), 0);
}

/*
 * DMA memory mapped past close keeps the function protected (the
 * fuzzer's freed-while-master-after-bdf-cfgwrite): an unclaimed file
 * may not turn bus mastering back on with PCI_IOC_BDF_CFGWRITE, nor
 * may anyone claim the function, until the last munmap.
 */
static void
dma_mapped_protected(bool child_detached)
{
	struct file *fp = xclaimed(), *other;
	struct pciuser_dmamem_alloc a;
	struct pciio_bdf_cfgreg b;
	struct uvm_object *uo;

	REQUIRE_EQ(dmamem(fp, PAGE_SIZE, 0, 0, &a), 0);
	REQUIRE_EQ(h_mmap(fp, a.pdm_cookie, PAGE_SIZE,
	    VM_PROT_READ | VM_PROT_WRITE, MAP_SHARED, &uo), 0);
	if (child_detached)
		REQUIRE_EQ(h_driver_detach(H_DEV_NIC, DETACH_FORCE), 0);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_MASTER_ENABLE, 0);
	other = xopen();
	memset(&b, 0, sizeof(b));
	b.bus = 0;
	b.device = H_DEV_NIC;
	b.cfgreg.reg = PCI_COMMAND_STATUS_REG;
	b.cfgreg.val = h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) |
	    PCI_COMMAND_MASTER_ENABLE;
	REQUIRE_EQ(h_ioctl(other, PCI_IOC_BDF_CFGWRITE, &b), EBUSY);
	REQUIRE_EQ(h_cfg_read(H_DEV_NIC, PCI_COMMAND_STATUS_REG) &
	    PCI_COMMAND_MASTER_ENABLE, 0);
	REQUIRE_EQ(claim(other, NULL), EBUSY);
	REQUIRE_EQ(h_phys_pages, 1);
	h_munmap(uo);
	REQUIRE_EQ(h_freed_while_master, 0);
	REQUIRE_EQ(h_phys_pages, 0);
	REQUIRE_EQ(dma_total(), 0);
	/* The last DMA memory gone, the function is free again. */
	b.cfgreg.reg = 0x40;
	b.cfgreg.val = 0;
	REQUIRE_EQ(h_ioctl(other, PCI_IOC_BDF_CFGWRITE, &b), 0);
	REQUIRE_EQ(claim(other, NULL), 0);
	REQUIRE_EQ(h_close(other), 0);
}

static void
case_dma_mapped_after_close_protected(void)
{

	dma_mapped_protected(false);
}

/*
 * The same after a forced detach of the claim's pciuser child with the
 * bus staying (found by the fuzzer: the claim was forgotten, pci(4) let
 * another file turn mastering back on, and the munmap freed the pages).
 */
static void
case_dma_mapped_after_child_detach_protected(void)
{

	dma_mapped_protected(true);
}

/*
 * Freed, still mapped, and the owner turns mastering on before the
 * munmap: the pages are leaked (quarantined), not freed.
 */
static void
case_dma_freed_mapped_master_leaks(void)
{
	struct file *fp = xclaimed();
	struct pciuser_dmamem_alloc a;
	struct uvm_object *uo;

	expect_leaks = 1;
	REQUIRE_EQ(dmamem(fp, PAGE_SIZE, 0, 0, &a), 0);
	REQUIRE_EQ(h_mmap(fp, a.pdm_cookie, PAGE_SIZE,
	    VM_PROT_READ | VM_PROT_WRITE, MAP_SHARED, &uo), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), 0);
	REQUIRE_EQ(cfgw(fp, PCI_COMMAND_STATUS_REG, 0x6), 0);
	h_munmap(uo);
	REQUIRE_EQ(h_freed_while_master, 0);
	REQUIRE_EQ(h_phys_pages, 1);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_freed_while_master, 0);
	REQUIRE_EQ(h_phys_pages, 1);
}

/* A device that keeps mastering: its memory is leaked, never reused. */
static void
case_close_dma_sticky_master(void)
{
	struct file *fp;
	struct pciuser_dmamem_alloc a;
	uint32_t map;

	expect_leaks = 1;
	fp = xdmaloaded(4, &a, &map);
	h_nic_sticky_master(true);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_freed_while_master, 0);
	REQUIRE_EQ(h_phys_pages, 4);
}

/* Freeing DMA memory while the device may still master. */
static void
case_dmamem_free_while_master(void)
{
	struct file *fp;
	struct pciuser_dmamem_alloc a;
	uint32_t map;

	fp = xdmaloaded(4, &a, &map);
	REQUIRE_EQ(cfgw(fp, PCI_COMMAND_STATUS_REG, 0x6), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMAP_UNLOAD, map), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), EBUSY);
	REQUIRE_EQ(h_freed_while_master, 0);
	REQUIRE_EQ(cfgw(fp, PCI_COMMAND_STATUS_REG, 0x2), 0);
	REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE, a.pdm_id), 0);
	REQUIRE_EQ(h_freed_while_master, 0);
	REQUIRE_EQ(h_close(fp), 0);
}

static struct file *reader_fp;
static int reader_error = -1;

static void *
reader(void *arg)
{
	struct pciuser_intr_event ev[4];
	size_t n;

	reader_error = h_read(reader_fp, ev, sizeof(ev), &n, 0);
	return NULL;
}

/* Forced detach while a reader sleeps and memory is mapped. */
static void
case_detach_during_use(void)
{
	struct file *fp = xclaimed(), *idle = xopen();
	struct pciuser_dmamem_alloc a;
	struct uvm_object *uo;
	pthread_t t;
	uint64_t pa;

	REQUIRE_EQ(dmamem(fp, PAGE_SIZE, 0, 0, &a), 0);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(0), PAGE_SIZE, VM_PROT_READ,
	    MAP_SHARED, &uo), 0);
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0), VM_PROT_READ, &pa), 0);
	REQUIRE_EQ(h_user_mapped(H_BAR0_BASE), 1);
	REQUIRE_EQ(intr(fp, PCIUSER_INTR_MSI, 1, NULL), 0);
	reader_fp = fp;
	REQUIRE_EQ(pthread_create(&t, NULL, reader, NULL), 0);
	usleep(50000);
	/* Not forced: a claim holds the bus. */
	REQUIRE_EQ(h_detach(0), EBUSY);
	REQUIRE_EQ(h_detach(DETACH_FORCE), 0);
	/* The page already faulted in is unmapped from the process. */
	REQUIRE_EQ(h_user_mapped(H_BAR0_BASE), 0);
	pthread_join(t, NULL);
	REQUIRE_EQ(reader_error, ENXIO);
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_INTR_DISESTABLISH, NULL), ENXIO);
	REQUIRE_EQ(h_poll(fp, POLLIN), POLLIN | POLLHUP | POLLERR);
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0), VM_PROT_READ, &pa), EIO);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_close(idle), 0);
	h_munmap(uo);
	REQUIRE_EQ(h_open(FREAD | FWRITE, &fp), ENXIO);
}

/* A BAR mapping that outlives its file holds off a non-forced detach. */
static void
case_detach_not_forced_with_mapping(void)
{
	struct file *fp = xclaimed();
	struct uvm_object *uo;
	uint64_t pa;

	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(0), PAGE_SIZE, VM_PROT_READ,
	    MAP_SHARED, &uo), 0);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_detach(0), EBUSY);
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0), VM_PROT_READ, &pa), 0);
	h_munmap(uo);
	REQUIRE_EQ(h_detach(0), 0);
}

/* Two openers race for one function: exactly one wins each round. */
static pthread_barrier_t race_barrier;
static int race_wins[2];

static void *
racer(void *arg)
{
	int me = (int)(intptr_t)arg, i;
	struct file *fp;

	for (i = 0; i < 200; i++) {
		REQUIRE_EQ(h_open(FREAD | FWRITE, &fp), 0);
		pthread_barrier_wait(&race_barrier);
		if (claim(fp, NULL) == 0)
			race_wins[me]++;
		pthread_barrier_wait(&race_barrier);
		REQUIRE_EQ(h_close(fp), 0);
		pthread_barrier_wait(&race_barrier);
	}
	return NULL;
}

static void
case_two_openers_race(void)
{
	pthread_t t[2];
	int i;

	pthread_barrier_init(&race_barrier, NULL, 2);
	for (i = 0; i < 2; i++)
		REQUIRE_EQ(pthread_create(&t[i], NULL, racer,
		    (void *)(intptr_t)i), 0);
	for (i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	REQUIRE_EQ(race_wins[0] + race_wins[1], 200);
}

/* Opens, claims and closes racing a forced detach of the bus. */
static volatile int opener_stop;
static pthread_mutex_t opener_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t opener_cv = PTHREAD_COND_INITIALIZER;
static int opener_rounds;

static void *
opener(void *arg)
{
	struct file *fp;
	int error;

	while (!opener_stop) {
		pthread_mutex_lock(&opener_mtx);
		opener_rounds++;
		pthread_cond_broadcast(&opener_cv);
		pthread_mutex_unlock(&opener_mtx);
		error = h_open(FREAD | FWRITE, &fp);
		if (error) {
			REQUIRE_EQ(error, ENXIO);
			break;
		}
		error = claim(fp, NULL);
		REQUIRE(error == 0 || error == ENXIO || error == EBUSY);
		(void)dmamem(fp, PAGE_SIZE, 0, 0, NULL);
		REQUIRE_EQ(h_close(fp), 0);
	}
	return NULL;
}

static void
case_open_races_detach(void)
{
	pthread_t t[2];
	int i;

	for (i = 0; i < 2; i++)
		REQUIRE_EQ(pthread_create(&t[i], NULL, opener, NULL), 0);
	/* Both openers under way (a few rounds each on average). */
	pthread_mutex_lock(&opener_mtx);
	while (opener_rounds < 8)
		pthread_cond_wait(&opener_cv, &opener_mtx);
	pthread_mutex_unlock(&opener_mtx);
	REQUIRE_EQ(h_detach(DETACH_FORCE), 0);
	opener_stop = 1;
	for (i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	REQUIRE_EQ(h_phys_pages, 0);
}

/*
 * Self-tests of the stand-ins: each check the cases rely on must fire.
 * The offending code runs in a child, which must die of the panic.
 */
static void
expect_panic(void (*fn)(void), const char *what)
{
	int status;
	pid_t pid;

	if ((pid = fork()) == 0) {
		/* The child's stderr is the panic message; keep it quiet. */
		freopen("/dev/null", "w", stderr);
		fn();
		_exit(0);
	}
	REQUIRE(pid > 0);
	REQUIRE_EQ(waitpid(pid, &status, 0), pid);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT) {
		fprintf(stderr, "FAIL %s: %s did not panic\n", curcase, what);
		exit(1);
	}
}

static kmutex_t st_a, st_b, st_spin;
static kcondvar_t st_cv;

static void
st_init(void)
{

	mutex_init(&st_a, MUTEX_DEFAULT, IPL_NONE);
	mutex_init(&st_b, MUTEX_DEFAULT, IPL_NONE);
	mutex_init(&st_spin, MUTEX_DEFAULT, IPL_VM);
	cv_init(&st_cv, "selftest");
}

static void
st_order(void)
{

	mutex_enter(&st_a);
	mutex_enter(&st_b);
	mutex_exit(&st_b);
	mutex_exit(&st_a);
	mutex_enter(&st_b);
	mutex_enter(&st_a);	/* reversal */
}

static void
st_sleep_spin(void)
{

	mutex_spin_enter(&st_spin);
	(void)kmem_alloc(16, KM_SLEEP);
}

static void
st_cv_spin(void)
{

	mutex_spin_enter(&st_spin);
	mutex_enter(&st_a);	/* adaptive under a spin lock */
}

static void
st_recurse(void)
{

	mutex_enter(&st_a);
	mutex_enter(&st_a);
}

static void
st_kmem_size(void)
{

	kmem_free(kmem_alloc(16, KM_SLEEP), 32);
}

static void
case_selftest_lockdebug(void)
{

	st_init();
	expect_panic(st_order, "lock order reversal");
	expect_panic(st_sleep_spin, "KM_SLEEP with a spin mutex held");
	expect_panic(st_cv_spin, "adaptive mutex under a spin mutex");
	expect_panic(st_recurse, "recursive mutex_enter");
	expect_panic(st_kmem_size, "kmem_free with the wrong size");
	mutex_destroy(&st_a);
	mutex_destroy(&st_b);
	mutex_destroy(&st_spin);
	cv_destroy(&st_cv);
}

static struct pci_attach_args st_pa;
static bus_dmamap_t st_map;

static int
st_any(const struct pci_attach_args *pa)
{

	return 1;
}

static void
st_loaded_map(void)
{
	bus_dma_segment_t seg;
	void *kva;
	int rsegs;

	REQUIRE(pci_probe_device(NULL, pci_make_tag(NULL, 0, H_DEV_NIC, 0),
	    st_any, &st_pa));
	REQUIRE_EQ(bus_dmamem_alloc(st_pa.pa_dmat, PAGE_SIZE, PAGE_SIZE, 0,
	    &seg, 1, &rsegs, BUS_DMA_NOWAIT), 0);
	REQUIRE_EQ(bus_dmamem_map(st_pa.pa_dmat, &seg, 1, PAGE_SIZE, &kva,
	    0), 0);
	REQUIRE_EQ(bus_dmamap_create(st_pa.pa_dmat, PAGE_SIZE, 1, PAGE_SIZE,
	    0, BUS_DMA_NOWAIT, &st_map), 0);
	REQUIRE_EQ(bus_dmamap_load(st_pa.pa_dmat, st_map, kva, PAGE_SIZE,
	    NULL, BUS_DMA_NOWAIT), 0);
	bus_dmamap_sync(st_pa.pa_dmat, st_map, 0, PAGE_SIZE,
	    BUS_DMASYNC_PREWRITE);
}

static void
st_sync_mix(void)
{

	st_loaded_map();
	bus_dmamap_sync(st_pa.pa_dmat, st_map, 0, PAGE_SIZE,
	    BUS_DMASYNC_PREREAD | BUS_DMASYNC_POSTREAD);
}

static void
st_sync_zero(void)
{

	st_loaded_map();
	bus_dmamap_sync(st_pa.pa_dmat, st_map, 0, 0, BUS_DMASYNC_POSTREAD);
}

static void
st_map_beyond(void)
{
	bus_space_handle_t h;

	REQUIRE_EQ(bus_space_map(st_pa.pa_memt, H_BAR0_BASE, PAGE_SIZE, 0,
	    &h), 0);
	(void)bus_space_read_4(st_pa.pa_memt, h, PAGE_SIZE);
}

/* The x86 bus_dma behaviours the N2 and N4 cases rely on. */
static void
case_selftest_bus_dma(void)
{
	bus_dma_segment_t segs[2];
	bus_space_handle_t h;
	int rsegs;

	expect_panic(st_sync_mix, "bus_dmamap_sync PRE|POST");
	expect_panic(st_sync_zero, "bus_dmamap_sync of zero bytes");
	REQUIRE(pci_probe_device(NULL, pci_make_tag(NULL, 0, H_DEV_NIC, 0),
	    st_any, &st_pa));
	expect_panic(st_map_beyond, "bus_space_read past the mapping");
	/* 4 pages split at a 1-page boundary into 2 segments: EFBIG, lost. */
	REQUIRE_EQ(bus_dmamem_alloc(st_pa.pa_dmat, 4 * PAGE_SIZE, PAGE_SIZE,
	    PAGE_SIZE, segs, 2, &rsegs, BUS_DMA_NOWAIT), EFBIG);
	REQUIRE_EQ(h_leaked_pages, 4);
	REQUIRE_EQ(h_phys_pages, 4);
	/* An extent: a range has one owner. */
	REQUIRE_EQ(bus_space_map(st_pa.pa_memt, H_BAR0_BASE, PAGE_SIZE, 0,
	    &h), 0);
	REQUIRE_EQ(bus_space_map(st_pa.pa_memt, H_BAR0_BASE + PAGE_SIZE - 4,
	    8, 0, &segs[0].ds_addr), EBUSY);
	bus_space_unmap(st_pa.pa_memt, h, PAGE_SIZE);
}

/*
 * A gate where the slow driver's attach or detach sleeps (h_gate_hook):
 * that thread blocks there, kernel lock released, until the case lets it
 * go, and the case waits until it has arrived: the interleaving is the
 * case's, with no sleeps.
 */
static pthread_mutex_t gate_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_at, gate_open;

static void
gate_block(int what)
{

	pthread_mutex_lock(&gate_mtx);
	gate_at = what;
	pthread_cond_broadcast(&gate_cv);
	while (!gate_open)
		pthread_cond_wait(&gate_cv, &gate_mtx);
	pthread_mutex_unlock(&gate_mtx);
}

static void
gate_wait(int what)
{

	pthread_mutex_lock(&gate_mtx);
	while (gate_at != what)
		pthread_cond_wait(&gate_cv, &gate_mtx);
	pthread_mutex_unlock(&gate_mtx);
}

static void
gate_release(void)
{

	pthread_mutex_lock(&gate_mtx);
	gate_open = 1;
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mtx);
}

static void *
rescan_slow(void *arg)
{

	REQUIRE_EQ(h_rescan(H_DEV_SLOW), 1);
	return NULL;
}

static void *
detach_bus(void *arg)
{

	REQUIRE_EQ(h_detach(DETACH_FORCE), 0);
	return NULL;
}

/*
 * An open, and a claim on a file opened before, while pcidetach() sleeps
 * detaching a child after pciuser_busdetach() must fail with ENXIO and
 * leave nothing behind (before pciuser_busdetach_done(), the open made a
 * new bus record for the dying bus and got a file).
 */
static void
case_open_in_detach_window(void)
{
	struct file *fp, *late;
	pthread_t t;

	fp = xopen();
	REQUIRE_EQ(h_rescan(H_DEV_SLOW), 1);
	h_gate_hook = gate_block;
	REQUIRE_EQ(pthread_create(&t, NULL, detach_bus, NULL), 0);
	gate_wait(H_GATE_DETACH);
	REQUIRE_EQ(h_open(FREAD | FWRITE, &late), ENXIO);
	REQUIRE_EQ(claim(fp, NULL), ENXIO);
	gate_release();
	REQUIRE_EQ(pthread_join(t, NULL), 0);
	h_gate_hook = NULL;
	REQUIRE_EQ(h_slow_attached, 0);
	REQUIRE_EQ(h_close(fp), 0);
}

/*
 * A claim while a kernel driver's attach sleeps (issue 24): the driver
 * is already a child of the bus at the function's locators, but not yet
 * pci(4)'s c_dev.  The claim must fail with EBUSY rather than take the
 * function from under the driver.
 */
static void
case_claim_races_sleeping_attach(void)
{
	struct file *fp;
	pthread_t t;

	fp = xopen();
	h_gate_hook = gate_block;
	REQUIRE_EQ(pthread_create(&t, NULL, rescan_slow, NULL), 0);
	gate_wait(H_GATE_ATTACH);
	REQUIRE_EQ(claim_dev(fp, H_DEV_SLOW, NULL), EBUSY);
	gate_release();
	REQUIRE_EQ(pthread_join(t, NULL), 0);
	h_gate_hook = NULL;
	REQUIRE_EQ(h_slow_attached, 1);
	REQUIRE(driver_is(H_DEV_SLOW, "hslow"));
	REQUIRE_EQ(claim_dev(fp, H_DEV_SLOW, NULL), EBUSY);
	REQUIRE_EQ(h_close(fp), 0);
}

/*
 * A claimed function is owned by a pciuser child of the bus: pci(4)
 * records it as the function's driver, so a rescan attaches no kernel
 * driver there; a non-forced detach of it fails while the claim lives
 * (here a BAR mapping outliving the file); it goes with the claim's last
 * reference, leaving the command register as found (pci(4) writes back
 * what it captured when the child attached), and a rescan then attaches
 * the kernel driver.
 */
static void
case_claim_owned_by_child(void)
{
	struct pciuser_claim uc;
	struct uvm_object *uo;
	struct file *fp;
	uint32_t cmd;

	fp = xopen();
	cmd = h_cfg_read(H_DEV_SLOW, PCI_COMMAND_STATUS_REG) & 0xffff;
	REQUIRE_EQ(cmd, PCI_COMMAND_MEM_ENABLE);
	REQUIRE_EQ(claim_dev(fp, H_DEV_SLOW, &uc), 0);
	REQUIRE(driver_is(H_DEV_SLOW, "pciuser"));
	REQUIRE_EQ(h_rescan(H_DEV_SLOW), 0);
	REQUIRE_EQ(h_slow_attached, 0);
	REQUIRE_EQ(h_driver_detach(H_DEV_SLOW, 0), EBUSY);
	REQUIRE_EQ(h_mmap(fp, uc.puc_bars[0].pub_cookie, PAGE_SIZE,
	    VM_PROT_READ, MAP_SHARED, &uo), 0);
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE(driver_is(H_DEV_SLOW, "pciuser"));
	REQUIRE_EQ(h_driver_detach(H_DEV_SLOW, 0), EBUSY);
	h_munmap(uo);
	REQUIRE(driver_is(H_DEV_SLOW, NULL));
	/* Given back decoding as found, after pci(4)'s restore too. */
	REQUIRE_EQ(h_cfg_read(H_DEV_SLOW, PCI_COMMAND_STATUS_REG) & 0xffff,
	    cmd);
	REQUIRE_EQ(h_rescan(H_DEV_SLOW), 1);
	REQUIRE(driver_is(H_DEV_SLOW, "hslow"));
}

/*
 * A forced detach of a claim's pciuser child (what its bus does when it
 * goes) revokes the claim as a forced detach of the bus does: the file
 * sees ENXIO, BAR pages faulted in are unmapped and fault no more, DMA
 * memory is kept until munmap; the bus stays, and the function can be
 * claimed again once the old claim's last reference has gone.
 */
static void
case_child_forced_detach(void)
{
	struct file *fp = xclaimed(), *fp2;
	struct pciuser_dmamem_alloc a;
	struct pciuser_cfgreg r;
	struct uvm_object *uo;
	uint64_t pa;

	REQUIRE_EQ(dmamem(fp, PAGE_SIZE, 0, 0, &a), 0);
	REQUIRE_EQ(h_mmap(fp, PCIUSER_MMAP_BAR(0), PAGE_SIZE, VM_PROT_READ,
	    MAP_SHARED, &uo), 0);
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0), VM_PROT_READ, &pa), 0);
	REQUIRE_EQ(intr(fp, PCIUSER_INTR_MSI, 1, NULL), 0);
	REQUIRE(driver_is(H_DEV_NIC, "pciuser"));
	REQUIRE_EQ(h_driver_detach(H_DEV_NIC, 0), EBUSY);
	REQUIRE_EQ(h_driver_detach(H_DEV_NIC, DETACH_FORCE), 0);
	REQUIRE(driver_is(H_DEV_NIC, NULL));
	REQUIRE_EQ(h_user_mapped(H_BAR0_BASE), 0);
	REQUIRE_EQ(h_fault(uo, PCIUSER_MMAP_BAR(0), VM_PROT_READ, &pa), EIO);
	memset(&r, 0, sizeof(r));
	REQUIRE_EQ(h_ioctl(fp, PCIUSER_IOC_CFGREAD, &r), ENXIO);
	REQUIRE_EQ(h_poll(fp, POLLIN), POLLIN | POLLHUP | POLLERR);
	/* The BARs stay reserved until the claim's last reference goes. */
	fp2 = xopen();
	REQUIRE_EQ(claim(fp2, NULL), EBUSY);
	REQUIRE_EQ(h_close(fp), 0);
	h_munmap(uo);
	REQUIRE_EQ(claim(fp2, NULL), 0);
	REQUIRE(driver_is(H_DEV_NIC, "pciuser"));
	REQUIRE_EQ(h_close(fp2), 0);
	REQUIRE(driver_is(H_DEV_NIC, NULL));
}

static const struct {
	const char	*name;
	void		(*fn)(void);
	bool		xfail;		/* a known gap: expected to fail */
} cases[] = {
#define	C(n)	{ #n, case_##n, false }
#define	XFAIL(n)	{ #n, case_##n, true }
	C(open_close),
	C(ioc_claim),
	C(ioc_cfgread),
	C(ioc_cfgwrite),
	C(ioc_pio),
	C(ioc_intr_msi),
	C(ioc_intr_intx),
	C(ioc_dmamem),
	C(ioc_dmamap),
	C(ioc_dmamap_sync),
	C(pci_ioctls_unclaimed),
	C(caps_edquot),
	C(mmap_bar),
	C(mmap_dmamem),
	C(mmap_unclaimed),
	C(close_dma_live),
	C(close_dma_sticky_master),
	C(dma_mapped_after_close_protected),
	C(dma_mapped_after_child_detach_protected),
	C(dma_freed_mapped_master_leaks),
	C(dmamem_free_while_master),
	C(detach_during_use),
	C(detach_not_forced_with_mapping),
	C(two_openers_race),
	C(open_races_detach),
	C(n1_msix_establish),
	C(n2_sync_pre_post),
	C(n2_sync_zero_length),
	C(n3_bdf_cfgwrite_claimed),
	C(n4_efbig_leak),
	C(selftest_lockdebug),
	C(selftest_bus_dma),
	C(open_in_detach_window),
	C(claim_races_sleeping_attach),
	C(claim_owned_by_child),
	C(child_forced_detach),
#undef C
#undef XFAIL
};

/*
 * harness -t: the kernel's answer to every DMA sync and DMA memory
 * request of a table, one line each ("sync OPS LEN ERRNO", "dmamem
 * PAGES ALIGN BOUNDARY MAXSEGS ERRNO"), for the TypeScript port's
 * unit test to compare its own refusals with (ERRNO 0: accepted).
 */
static int
table(void)
{
	static const uint64_t bounds[] = { 0, 1, 2, 4, 16 };
	static const uint64_t aligns[] = { 0, 2, 8 };
	static const uint32_t npages[] = { 1, 2, 3, 4, 5, 8, 16, 17 };
	struct pciuser_dmamem_alloc a;
	struct file *fp;
	uint32_t map, ops, segs;
	uint64_t len;
	size_t p, b, al;
	int error;

	curcase = "table";
	h_boot();
	fp = xdmaloaded(2, &a, &map);
	for (ops = 0; ops < 0x20; ops++)
		for (len = 0; len < 3; len++)
			printf("sync %u %ju %d\n", ops, (uintmax_t)len,
			    sync_ops(fp, map, ops, 0, len));
	REQUIRE_EQ(h_close(fp), 0);
	fp = xclaimed();
	for (p = 0; p < __arraycount(npages); p++)
	for (al = 0; al < __arraycount(aligns); al++)
	for (b = 0; b < __arraycount(bounds); b++)
	for (segs = 1; segs <= 18; segs++) {
		memset(&a, 0, sizeof(a));
		a.pdm_size = npages[p] * PAGE_SIZE;
		a.pdm_align = aligns[al] * PAGE_SIZE;
		a.pdm_boundary = bounds[b] * PAGE_SIZE;
		a.pdm_maxsegs = segs;
		error = h_ioctl(fp, PCIUSER_IOC_DMAMEM_ALLOC, &a);
		printf("dmamem %u %ju %ju %u %d\n", npages[p],
		    (uintmax_t)a.pdm_align, (uintmax_t)a.pdm_boundary, segs,
		    error);
		if (error == 0)
			REQUIRE_EQ(id_ioctl(fp, PCIUSER_IOC_DMAMEM_FREE,
			    a.pdm_id), 0);
	}
	REQUIRE_EQ(h_close(fp), 0);
	REQUIRE_EQ(h_leaked_pages, 0);
	return 0;
}

static int
run_one(size_t i)
{
	char buf[512];

	curcase = cases[i].name;
	h_boot();
	cases[i].fn();
	if (!expect_leaks && h_shutdown_check(buf, sizeof(buf))) {
		fprintf(stderr, "FAIL %s: left behind:%s\n", curcase, buf);
		return 1;
	}
	/* Leaks on purpose: not for LeakSanitizer to report at exit. */
	if (expect_leaks)
		_exit(0);
	return 0;
}

int
main(int argc, char **argv)
{
	size_t i;
	int status, failed = 0;
	pid_t pid;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc == 2 && strcmp(argv[1], "-l") == 0) {
		for (i = 0; i < __arraycount(cases); i++)
			printf("%s%s\n", cases[i].name,
			    cases[i].xfail ? " xfail" : "");
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "-t") == 0)
		return table();
	if (argc == 2 && strcmp(argv[1], "-a") == 0) {
		for (i = 0; i < __arraycount(cases); i++) {
			if ((pid = fork()) == 0)
				_exit(run_one(i));
			waitpid(pid, &status, 0);
			if (cases[i].xfail) {
				if (WIFEXITED(status) &&
				    WEXITSTATUS(status) == 0) {
					printf("XPASS %s (known gap fixed? "
					    "drop its XFAIL)\n", cases[i].name);
					failed++;
				} else
					printf("xfail %s (known gap)\n",
					    cases[i].name);
			} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
				printf("ok   %s\n", cases[i].name);
			else {
				printf("FAIL %s (%s %d)\n", cases[i].name,
				    WIFSIGNALED(status) ? "signal" : "exit",
				    WIFSIGNALED(status) ? WTERMSIG(status) :
				    WEXITSTATUS(status));
				failed++;
			}
		}
		printf("%zu cases, %d failed\n", __arraycount(cases), failed);
		return failed != 0;
	}
	if (argc == 2) {
		for (i = 0; i < __arraycount(cases); i++)
			if (strcmp(argv[1], cases[i].name) == 0)
				return run_one(i);
		fprintf(stderr, "harness: no case %s\n", argv[1]);
		return 2;
	}
	fprintf(stderr, "usage: harness -l | -a | CASE\n");
	return 2;
}
