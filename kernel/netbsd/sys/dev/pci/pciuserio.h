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

#ifndef _DEV_PCI_PCIUSERIO_H_
#define	_DEV_PCI_PCIUSERIO_H_

/*
 * pci(4) user driver interface: the ioctl ABI of a claimed PCI function.
 *
 * Rules for this header, so that it can be used from userland, from
 * the kernel and from foreign-language bindings that compute the
 * layout with a host compiler:
 *
 *  - only fixed-width integer types; no pointers, no long, no size_t,
 *    no bus_addr_t.  User addresses and bus addresses are uint64_t.
 *  - every structure is a multiple of 8 bytes and has explicit
 *    padding, so that its layout is the same on every LP64 and ILP32
 *    ABI NetBSD supports (uint64_t members are 8-byte aligned by
 *    construction, not by the compiler's alignment rules).
 *  - the only other header needed is <sys/ioccom.h> for _IO* macros.
 */

#ifdef _KERNEL
#include <sys/types.h>
#else
#include <stdint.h>
#endif
#include <sys/ioccom.h>

#define	PCIUSER_ABI_VERSION	2

#define	PCIUSER_MAXBARS		6	/* BARs of a type 0 header */
#define	PCIUSER_MAXVECS		32	/* interrupt vectors per claim */
#define	PCIUSER_DMA_MAXSEGS	1024	/* segments of a dmamem or dmamap */

/*
 * mmap(2) offsets ("cookies").  Offset space of a claimed file:
 *
 *	[ (1 + bar) << PCIUSER_MMAP_SHIFT, + BAR size )	  memory BAR 'bar'
 *	[ id << PCIUSER_MMAP_SHIFT, + size )		  DMA memory 'id'
 *
 * DMA memory ids start at PCIUSER_DMAMEM_ID_MIN so the two never meet.
 * Cookies are returned by the kernel (pub_cookie, pdm_cookie) and
 * should be treated as opaque by userland.
 */
#define	PCIUSER_MMAP_SHIFT	40
#define	PCIUSER_MMAP_BAR(bar)	((uint64_t)(1 + (bar)) << PCIUSER_MMAP_SHIFT)
#define	PCIUSER_DMAMEM_ID_MIN	16
#define	PCIUSER_DMAMEM_ID_MAX	((1U << 22) - 1)

/*
 * pciuser_bar: one base address register of the claimed function.
 */
struct pciuser_bar {
	uint64_t	pub_base;	/* bus address (informational) */
	uint64_t	pub_size;	/* size in bytes; 0 if unused */
	uint64_t	pub_cookie;	/* mmap offset; 0 if not mappable */
	uint32_t	pub_reg;	/* config space offset of the BAR */
	uint32_t	pub_flags;	/* PCIUSER_BAR_* */
	/*
	 * Ranges of this BAR that belong to the kernel: the MSI-X table
	 * and the MSI-X PBA, if they live here (size 0 otherwise).  PIO
	 * that touches one fails with EPERM, and so does an mmap(2) that
	 * touches a page holding one: map around them.
	 */
	uint64_t	pub_msix_table;		/* offset in the BAR */
	uint64_t	pub_msix_table_size;
	uint64_t	pub_msix_pba;		/* offset in the BAR */
	uint64_t	pub_msix_pba_size;
};

#define	PCIUSER_BAR_VALID	0x00000001	/* usable: PIO (and mmap) */
#define	PCIUSER_BAR_IO		0x00000002	/* I/O space (else memory) */
#define	PCIUSER_BAR_MEM64	0x00000004	/* 64-bit memory BAR */
#define	PCIUSER_BAR_PREFETCH	0x00000008	/* prefetchable memory */
#define	PCIUSER_BAR_MMAP	0x00000010	/* may be mmap(2)ed */
#define	PCIUSER_BAR_UNASSIGNED	0x00000020	/* implemented, no address:
						   neither PIO nor mmap */

/*
 * PCIUSER_IOC_CLAIM: claim one function of the bus behind this
 * /dev/pciN for the calling open file.
 */
struct pciuser_claim {
	uint32_t	puc_bus;	/* in: bus number of this pciN */
	uint32_t	puc_device;	/* in: device number */
	uint32_t	puc_function;	/* in: function number */
	uint32_t	puc_flags;	/* in: must be 0 */
	uint32_t	puc_version;	/* out: PCIUSER_ABI_VERSION */
	uint32_t	puc_id;		/* out: PCI_ID_REG */
	uint32_t	puc_class;	/* out: PCI_CLASS_REG */
	uint32_t	puc_subsys;	/* out: PCI_SUBSYS_ID_REG */
	uint32_t	puc_intrpin;	/* out: 0 none, 1-4 INTA-INTD */
	uint32_t	puc_caps;	/* out: PCIUSER_CAP_* */
	uint32_t	puc_msi_count;	/* out: MSI vectors supported */
	uint32_t	puc_msix_count;	/* out: MSI-X vectors supported */
	uint32_t	puc_cfgsize;	/* out: config space reachable,
					   256 or 4096 bytes */
	uint32_t	puc_pad;
	struct pciuser_bar puc_bars[PCIUSER_MAXBARS];	/* out */
};

#define	PCIUSER_CAP_INTX_DISABLE 0x00000001	/* command reg INTx disable */
#define	PCIUSER_CAP_MSI		0x00000002
#define	PCIUSER_CAP_MSIX	0x00000004
#define	PCIUSER_CAP_DMA64	0x00000008	/* 64-bit DMA tag usable */

/*
 * PCIUSER_IOC_CFGREAD/CFGWRITE: 32-bit config space access to the
 * claimed function, below puc_cfgsize.  Writes are allowlisted (see
 * pciuser(4)): the command and status register, cache line size and
 * latency timer, PME bits of the power management capability, the
 * PCI Express device, link and device 2 control registers (not FLR,
 * MPS, phantom functions, ARI), vendor-specific capabilities and AER;
 * only the allowed bits of those are written.  Everything else -- BARs,
 * ROM BAR, interrupt line, MSI/MSI-X, power state, SR-IOV, Resizable
 * BAR -- fails with EPERM.  The INTx disable bit of the command
 * register is owned by the kernel while INTx is established.
 */
struct pciuser_cfgreg {
	uint32_t	pcr_reg;	/* in: offset, 4-byte aligned */
	uint32_t	pcr_val;	/* in/out: value */
};

/*
 * PCIUSER_IOC_PIO_READ/PIO_WRITE: register access through a BAR
 * (I/O or memory) of the claimed function, done by the kernel with
 * bus_space(9).  This is the only way to reach I/O BARs and memory
 * BARs that cannot be mmapped (smaller than a page or not page
 * aligned).
 */
struct pciuser_pio {
	uint32_t	pio_bar;	/* in: BAR index 0-5 */
	uint32_t	pio_width;	/* in: 1, 2, 4 (or 8, memory BARs) */
	uint64_t	pio_offset;	/* in: offset in the BAR */
	uint64_t	pio_value;	/* in (write) / out (read) */
};

/*
 * PCIUSER_IOC_INTR_ESTABLISH: allocate and establish interrupts.
 * INTx is level triggered: the kernel handler masks the function with
 * the command register's INTx disable bit (or runs the installed ack,
 * see below) and the process unmasks it with PCIUSER_IOC_INTR_UNMASK.
 * MSI and MSI-X are edge triggered and only counted.
 */
struct pciuser_intr_setup {
	uint32_t	pis_type;	/* in: PCIUSER_INTR_* */
	uint32_t	pis_count;	/* in: vectors wanted; out: got */
	uint32_t	pis_flags;	/* in: must be 0 */
	uint32_t	pis_pad;
};

#define	PCIUSER_INTR_INTX	0
#define	PCIUSER_INTR_MSI	1
#define	PCIUSER_INTR_MSIX	2

/*
 * PCIUSER_IOC_INTR_SETACK: declarative interrupt acknowledge for INTx
 * on functions without the INTx disable bit (pre PCI 2.3).  In the
 * handler the kernel, in this order:
 *  1. if PCIUSER_ACK_STATUS: reads pia_status_offset (pia_width wide)
 *     from BAR pia_bar; if (value & pia_status_mask) == 0 the
 *     interrupt is not ours (shared line) and the handler returns 0;
 *  2. writes pia_value (pia_width wide) at pia_offset of BAR pia_bar,
 *     which must mask or acknowledge the interrupt at the device.
 * Must be installed before INTx is established.  Clearing (flags 0)
 * is refused while INTx is established on such a function.
 */
struct pciuser_intr_ack {
	uint32_t	pia_flags;	/* in: PCIUSER_ACK_* */
	uint32_t	pia_bar;	/* in: BAR index 0-5 */
	uint32_t	pia_width;	/* in: 1, 2 or 4 */
	uint32_t	pia_pad;
	uint64_t	pia_offset;	/* in: register to write */
	uint64_t	pia_value;	/* in: value to write */
	uint64_t	pia_status_offset; /* in: status register */
	uint64_t	pia_status_mask;   /* in: "interrupt is ours" bits */
};

#define	PCIUSER_ACK_ENABLE	0x00000001	/* ack installed */
#define	PCIUSER_ACK_STATUS	0x00000002	/* check status first */

/*
 * PCIUSER_IOC_INTR_UNMASK: re-enable a masked INTx (clears the INTx
 * disable bit).  No-op for MSI/MSI-X.
 */
struct pciuser_intr_unmask {
	uint32_t	piu_vector;	/* in: vector (0 for INTx) */
	uint32_t	piu_pad;
};

/*
 * read(2) on a file with established interrupts returns an array of
 * these, one per vector that fired since the last read(2); the count
 * is reset by the read.  read(2) blocks (unless O_NONBLOCK) until at
 * least one vector has fired; poll(2) POLLIN and kqueue EVFILT_READ
 * report the same condition.  The buffer must hold at least one
 * record.
 */
struct pciuser_intr_event {
	uint32_t	pie_vector;	/* vector index */
	uint32_t	pie_count;	/* interrupts since the last read */
};

/*
 * DMA.  Object model (after FreeBSD proto(4) busdma, reduced):
 *	dmamem	memory from bus_dmamem_alloc(9) on the device's DMA tag,
 *		wired, mapped in the kernel and mmap(2)able by the process
 *	dmamap	a bus_dmamap(9) that mirrors the process's map; it is
 *		loaded with a range of one dmamem object
 * Both live in the open file and are named by small integer ids.
 */
struct pciuser_dmamem_alloc {
	uint64_t	pdm_size;	/* in: bytes, rounded up to pages;
					   charged against the caps */
	uint64_t	pdm_align;	/* in: power of 2; 0 means page */
	uint64_t	pdm_boundary;	/* in: 0, or a power of 2 of at
					   least a page */
	uint64_t	pdm_maxaddr;	/* in: highest usable bus address;
					   0 means 32 bit (or 64 bit with
					   PCIUSER_DMA_64BIT) */
	uint32_t	pdm_maxsegs;	/* in: max segments, at most
					   PCIUSER_DMA_MAXSEGS; 1:
					   contiguous; 0: as needed */
	uint32_t	pdm_flags;	/* in: PCIUSER_DMA_* */
	uint32_t	pdm_id;		/* out: dmamem id */
	uint32_t	pdm_nsegs;	/* out: segments allocated */
	uint64_t	pdm_cookie;	/* out: mmap(2) offset */
};

#define	PCIUSER_DMA_COHERENT	0x00000001	/* BUS_DMA_COHERENT */
#define	PCIUSER_DMA_64BIT	0x00000002	/* may use 64-bit tag */
#define	PCIUSER_DMA_PREFETCH	0x00000004	/* BUS_DMA_PREFETCHABLE */

struct pciuser_dma_id {
	uint32_t	pdi_id;		/* in: dmamem or dmamap id */
	uint32_t	pdi_pad;
};

struct pciuser_dmamap_create {
	uint64_t	pdc_maxsize;	/* in: largest load; charged
					   against the caps (bounce) */
	uint64_t	pdc_maxsegsz;	/* in: largest segment */
	uint64_t	pdc_boundary;	/* in: as pdm_boundary */
	uint64_t	pdc_maxaddr;	/* in: as pdm_maxaddr */
	uint32_t	pdc_nsegments;	/* in: max segments, 1 to
					   PCIUSER_DMA_MAXSEGS */
	uint32_t	pdc_flags;	/* in: PCIUSER_DMA_64BIT */
	uint32_t	pdc_id;		/* out: dmamap id */
	uint32_t	pdc_pad;
};

struct pciuser_dma_seg {
	uint64_t	ds_addr;	/* bus (device-visible) address */
	uint64_t	ds_len;
};

struct pciuser_dmamap_load {
	uint32_t	pdl_map;	/* in: dmamap id */
	uint32_t	pdl_mem;	/* in: dmamem id */
	uint64_t	pdl_offset;	/* in: offset in dmamem */
	uint64_t	pdl_len;	/* in: bytes */
	uint64_t	pdl_segs;	/* in: user address of a
					   struct pciuser_dma_seg array */
	uint32_t	pdl_maxsegs;	/* in: entries in that array, at
					   least the map's pdc_nsegments */
	uint32_t	pdl_nsegs;	/* out: entries filled */
	uint32_t	pdl_flags;	/* in: PCIUSER_LOAD_* */
	uint32_t	pdl_pad;
};

#define	PCIUSER_LOAD_READ	0x00000001	/* device -> memory only */
#define	PCIUSER_LOAD_WRITE	0x00000002	/* memory -> device only */

struct pciuser_dmamap_sync {
	uint32_t	pds_map;	/* in: dmamap id */
	uint32_t	pds_ops;	/* in: PCIUSER_SYNC_* */
	uint64_t	pds_offset;	/* in: offset in the loaded range */
	uint64_t	pds_len;	/* in: bytes */
};

/* Same values as BUS_DMASYNC_* in bus_dma(9). */
#define	PCIUSER_SYNC_PREREAD	0x01
#define	PCIUSER_SYNC_POSTREAD	0x02
#define	PCIUSER_SYNC_PREWRITE	0x04
#define	PCIUSER_SYNC_POSTWRITE	0x08

/*
 * ioctls.  Group 'P' is pci(4)'s (pciio.h uses numbers 0-6); this
 * interface uses 64 and up.
 */
#define	PCIUSER_IOC_CLAIM		_IOWR('P', 64, struct pciuser_claim)
#define	PCIUSER_IOC_CFGREAD		_IOWR('P', 65, struct pciuser_cfgreg)
#define	PCIUSER_IOC_CFGWRITE		_IOW('P', 66, struct pciuser_cfgreg)
#define	PCIUSER_IOC_PIO_READ		_IOWR('P', 67, struct pciuser_pio)
#define	PCIUSER_IOC_PIO_WRITE		_IOW('P', 68, struct pciuser_pio)
#define	PCIUSER_IOC_INTR_ESTABLISH	_IOWR('P', 69, struct pciuser_intr_setup)
#define	PCIUSER_IOC_INTR_DISESTABLISH	_IO('P', 70)
#define	PCIUSER_IOC_INTR_SETACK		_IOW('P', 71, struct pciuser_intr_ack)
#define	PCIUSER_IOC_INTR_UNMASK		_IOW('P', 72, struct pciuser_intr_unmask)
#define	PCIUSER_IOC_DMAMEM_ALLOC	_IOWR('P', 80, struct pciuser_dmamem_alloc)
#define	PCIUSER_IOC_DMAMEM_FREE		_IOW('P', 81, struct pciuser_dma_id)
#define	PCIUSER_IOC_DMAMAP_CREATE	_IOWR('P', 82, struct pciuser_dmamap_create)
#define	PCIUSER_IOC_DMAMAP_DESTROY	_IOW('P', 83, struct pciuser_dma_id)
#define	PCIUSER_IOC_DMAMAP_LOAD		_IOWR('P', 84, struct pciuser_dmamap_load)
#define	PCIUSER_IOC_DMAMAP_UNLOAD	_IOW('P', 85, struct pciuser_dma_id)
#define	PCIUSER_IOC_DMAMAP_SYNC		_IOW('P', 86, struct pciuser_dmamap_sync)

#ifdef _KERNEL
struct pci_softc;
int	pciuser_open(dev_t, int, int, struct lwp *);
int	pciuser_busdetach(struct pci_softc *, int);
void	pciuser_busdetach_done(struct pci_softc *);
#endif

#endif /* !_DEV_PCI_PCIUSERIO_H_ */
