/*
 * abi-probe.c: print the pci(4) user driver ABI (pciuserio.h) as JSON:
 * ioctl numbers, struct sizes and member offsets, mmap constants.
 *
 * Host build (no NetBSD headers needed; amd64 layout on any LP64 host):
 *	cc -I kernel/netbsd/sys -I kernel/netbsd/abi-shim \
 *	    kernel/netbsd/abi-probe.c -o abi-probe && ./abi-probe
 * Cross build without libc (-DABI_PROBE_STATIC): emits every value as a
 * global constant instead, for inspection of the assembly, e.g.
 *	clang --target=x86_64-unknown-netbsd -ffreestanding -nostdlibinc \
 *	    -DABI_PROBE_STATIC -I kernel/netbsd/sys -I <netbsd>/sys -S ...
 */
#include <stddef.h>
#include <stdint.h>

#include <dev/pci/pciuserio.h>

#define	ABI_IOCTLS(X)						\
	X(PCIUSER_IOC_CLAIM)					\
	X(PCIUSER_IOC_CFGREAD)					\
	X(PCIUSER_IOC_CFGWRITE)					\
	X(PCIUSER_IOC_PIO_READ)					\
	X(PCIUSER_IOC_PIO_WRITE)				\
	X(PCIUSER_IOC_INTR_ESTABLISH)				\
	X(PCIUSER_IOC_INTR_DISESTABLISH)			\
	X(PCIUSER_IOC_INTR_SETACK)				\
	X(PCIUSER_IOC_INTR_UNMASK)				\
	X(PCIUSER_IOC_DMAMEM_ALLOC)				\
	X(PCIUSER_IOC_DMAMEM_FREE)				\
	X(PCIUSER_IOC_DMAMAP_CREATE)				\
	X(PCIUSER_IOC_DMAMAP_DESTROY)				\
	X(PCIUSER_IOC_DMAMAP_LOAD)				\
	X(PCIUSER_IOC_DMAMAP_UNLOAD)				\
	X(PCIUSER_IOC_DMAMAP_SYNC)

#define	ABI_CONSTS(X)						\
	X(PCIUSER_ABI_VERSION)					\
	X(PCIUSER_MAXBARS)					\
	X(PCIUSER_MAXVECS)					\
	X(PCIUSER_DMA_MAXSEGS)					\
	X(PCIUSER_MMAP_SHIFT)					\
	X(PCIUSER_DMAMEM_ID_MIN)				\
	X(PCIUSER_DMAMEM_ID_MAX)				\
	X(PCIUSER_BAR_VALID)					\
	X(PCIUSER_BAR_IO)					\
	X(PCIUSER_BAR_MEM64)					\
	X(PCIUSER_BAR_PREFETCH)					\
	X(PCIUSER_BAR_MMAP)					\
	X(PCIUSER_BAR_UNASSIGNED)				\
	X(PCIUSER_CAP_INTX_DISABLE)				\
	X(PCIUSER_CAP_MSI)					\
	X(PCIUSER_CAP_MSIX)					\
	X(PCIUSER_CAP_DMA64)					\
	X(PCIUSER_INTR_INTX)					\
	X(PCIUSER_INTR_MSI)					\
	X(PCIUSER_INTR_MSIX)					\
	X(PCIUSER_ACK_ENABLE)					\
	X(PCIUSER_ACK_STATUS)					\
	X(PCIUSER_DMA_COHERENT)					\
	X(PCIUSER_DMA_64BIT)					\
	X(PCIUSER_DMA_PREFETCH)					\
	X(PCIUSER_LOAD_READ)					\
	X(PCIUSER_LOAD_WRITE)					\
	X(PCIUSER_SYNC_PREREAD)					\
	X(PCIUSER_SYNC_POSTREAD)				\
	X(PCIUSER_SYNC_PREWRITE)				\
	X(PCIUSER_SYNC_POSTWRITE)

/* S(struct tag) starts a struct, F(struct tag, member) one member. */
#define	ABI_STRUCTS(S, F)					\
	S(pciuser_bar)						\
	F(pciuser_bar, pub_base)				\
	F(pciuser_bar, pub_size)				\
	F(pciuser_bar, pub_cookie)				\
	F(pciuser_bar, pub_reg)					\
	F(pciuser_bar, pub_flags)				\
	F(pciuser_bar, pub_msix_table)				\
	F(pciuser_bar, pub_msix_table_size)			\
	F(pciuser_bar, pub_msix_pba)				\
	F(pciuser_bar, pub_msix_pba_size)			\
	S(pciuser_claim)					\
	F(pciuser_claim, puc_bus)				\
	F(pciuser_claim, puc_device)				\
	F(pciuser_claim, puc_function)				\
	F(pciuser_claim, puc_flags)				\
	F(pciuser_claim, puc_version)				\
	F(pciuser_claim, puc_id)				\
	F(pciuser_claim, puc_class)				\
	F(pciuser_claim, puc_subsys)				\
	F(pciuser_claim, puc_intrpin)				\
	F(pciuser_claim, puc_caps)				\
	F(pciuser_claim, puc_msi_count)				\
	F(pciuser_claim, puc_msix_count)			\
	F(pciuser_claim, puc_cfgsize)				\
	F(pciuser_claim, puc_pad)				\
	F(pciuser_claim, puc_bars)				\
	S(pciuser_cfgreg)					\
	F(pciuser_cfgreg, pcr_reg)				\
	F(pciuser_cfgreg, pcr_val)				\
	S(pciuser_pio)						\
	F(pciuser_pio, pio_bar)					\
	F(pciuser_pio, pio_width)				\
	F(pciuser_pio, pio_offset)				\
	F(pciuser_pio, pio_value)				\
	S(pciuser_intr_setup)					\
	F(pciuser_intr_setup, pis_type)				\
	F(pciuser_intr_setup, pis_count)			\
	F(pciuser_intr_setup, pis_flags)			\
	F(pciuser_intr_setup, pis_pad)				\
	S(pciuser_intr_ack)					\
	F(pciuser_intr_ack, pia_flags)				\
	F(pciuser_intr_ack, pia_bar)				\
	F(pciuser_intr_ack, pia_width)				\
	F(pciuser_intr_ack, pia_pad)				\
	F(pciuser_intr_ack, pia_offset)				\
	F(pciuser_intr_ack, pia_value)				\
	F(pciuser_intr_ack, pia_status_offset)			\
	F(pciuser_intr_ack, pia_status_mask)			\
	S(pciuser_intr_unmask)					\
	F(pciuser_intr_unmask, piu_vector)			\
	F(pciuser_intr_unmask, piu_pad)				\
	S(pciuser_intr_event)					\
	F(pciuser_intr_event, pie_vector)			\
	F(pciuser_intr_event, pie_count)			\
	S(pciuser_dmamem_alloc)					\
	F(pciuser_dmamem_alloc, pdm_size)			\
	F(pciuser_dmamem_alloc, pdm_align)			\
	F(pciuser_dmamem_alloc, pdm_boundary)			\
	F(pciuser_dmamem_alloc, pdm_maxaddr)			\
	F(pciuser_dmamem_alloc, pdm_maxsegs)			\
	F(pciuser_dmamem_alloc, pdm_flags)			\
	F(pciuser_dmamem_alloc, pdm_id)				\
	F(pciuser_dmamem_alloc, pdm_nsegs)			\
	F(pciuser_dmamem_alloc, pdm_cookie)			\
	S(pciuser_dma_id)					\
	F(pciuser_dma_id, pdi_id)				\
	F(pciuser_dma_id, pdi_pad)				\
	S(pciuser_dmamap_create)				\
	F(pciuser_dmamap_create, pdc_maxsize)			\
	F(pciuser_dmamap_create, pdc_maxsegsz)			\
	F(pciuser_dmamap_create, pdc_boundary)			\
	F(pciuser_dmamap_create, pdc_maxaddr)			\
	F(pciuser_dmamap_create, pdc_nsegments)			\
	F(pciuser_dmamap_create, pdc_flags)			\
	F(pciuser_dmamap_create, pdc_id)			\
	F(pciuser_dmamap_create, pdc_pad)			\
	S(pciuser_dma_seg)					\
	F(pciuser_dma_seg, ds_addr)				\
	F(pciuser_dma_seg, ds_len)				\
	S(pciuser_dmamap_load)					\
	F(pciuser_dmamap_load, pdl_map)				\
	F(pciuser_dmamap_load, pdl_mem)				\
	F(pciuser_dmamap_load, pdl_offset)			\
	F(pciuser_dmamap_load, pdl_len)				\
	F(pciuser_dmamap_load, pdl_segs)			\
	F(pciuser_dmamap_load, pdl_maxsegs)			\
	F(pciuser_dmamap_load, pdl_nsegs)			\
	F(pciuser_dmamap_load, pdl_flags)			\
	F(pciuser_dmamap_load, pdl_pad)				\
	S(pciuser_dmamap_sync)					\
	F(pciuser_dmamap_sync, pds_map)				\
	F(pciuser_dmamap_sync, pds_ops)				\
	F(pciuser_dmamap_sync, pds_offset)			\
	F(pciuser_dmamap_sync, pds_len)

#ifdef ABI_PROBE_STATIC

#define	V(name)		const uint64_t abi_##name = (uint64_t)(name);
#define	SZ(tag)		const uint64_t abi_sizeof_##tag = sizeof(struct tag);
#define	OF(tag, m)	const uint64_t abi_offsetof_##tag##_##m = \
			    offsetof(struct tag, m);
ABI_IOCTLS(V)
ABI_CONSTS(V)
ABI_STRUCTS(SZ, OF)

#else /* !ABI_PROBE_STATIC */

#include <stdio.h>

static const char *sep;

#define	PV(name)	printf("%s\n    \"%s\": %llu", sep, #name, \
			    (unsigned long long)(name)), sep = ",";
#define	PS(tag)		printf("%s\n    \"%s\": { \"size\": %zu, " \
			    "\"offsets\": {", sep, #tag, \
			    sizeof(struct tag)), sep = "", \
			    abi_close = " } }";
#define	PF(tag, m)	printf("%s \"%s\": %zu", sep, #m, \
			    offsetof(struct tag, m)), sep = ",";

int
main(void)
{
	const char *abi_close = NULL;

	printf("{\n  \"target\": \"netbsd-amd64\",\n  \"ioctls\": {");
	sep = "";
	ABI_IOCTLS(PV)
	printf("\n  },\n  \"constants\": {");
	sep = "";
	ABI_CONSTS(PV)
	printf("\n  },\n  \"structs\": {");
	sep = "";
	/*
	 * Each S() closes the previous struct's braces before opening
	 * its own; the last one is closed after the list.
	 */
#undef	PS
#define	PS(tag)		printf("%s%s\n    \"%s\": { \"size\": %zu, " \
			    "\"offsets\": {", abi_close ? abi_close : "", \
			    abi_close ? "," : "", #tag, sizeof(struct tag)), \
			    sep = "", abi_close = " } }";
	ABI_STRUCTS(PS, PF)
	printf("%s\n  }\n}\n", abi_close ? abi_close : "");
	return 0;
}

#endif /* ABI_PROBE_STATIC */
