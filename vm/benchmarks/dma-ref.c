/*
 * C reference for vm/benchmarks/dma.ts: the same DMA work as upci's bus_dma,
 * with raw VFIO ioctls on an edu device. Built on the host at bench time with
 * `cc -O2 -static` and run in the guest.
 *
 *   dma-ref <pci-address> <map-iterations> <alloc-iterations> <transfers> <transfer-bytes>
 *
 * Prints one JSON line: map+unmap and alloc+free operations per second, and
 * edu DMA copy time per transfer in each direction.
 */
#include "vfio-ref.h"

#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_BUF 0x40000ULL
#define PAGE 4096

static struct vfio_ref ref;

static void map_dma(void *vaddr, uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_map m = {
      .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      .vaddr = (uintptr_t)vaddr, .iova = iova, .size = size};
  if (ioctl(ref.container, VFIO_IOMMU_MAP_DMA, &m)) die("VFIO_IOMMU_MAP_DMA");
}

static void unmap_dma(uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = size};
  if (ioctl(ref.container, VFIO_IOMMU_UNMAP_DMA, &u) || u.size != size) die("VFIO_IOMMU_UNMAP_DMA");
}

static void *alloc_page(void) {
  void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  return p;
}

static void edu_dma(uint64_t src, uint64_t dst, uint32_t count, int to_ram) {
  w64(&ref, EDU_DMA_SRC, src);
  w64(&ref, EDU_DMA_DST, dst);
  w32(&ref, EDU_DMA_COUNT, count);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  w32(&ref, EDU_DMA_CMD, 1 | (to_ram ? 2 : 0));
  while (r32(&ref, EDU_DMA_CMD) & 1) {
  }
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: dma-ref <pci-address> <map-iterations> <alloc-iterations> <transfers> <transfer-bytes>\n");
    return 2;
  }
  const char *addr = argv[1];
  int map_iters = atoi(argv[2]), alloc_iters = atoi(argv[3]), transfers = atoi(argv[4]);
  uint32_t xfer = (uint32_t)atoi(argv[5]);

  vfio_ref_open(&ref, addr);

  /* map + unmap of one 4 KiB page at a fixed IOVA. */
  void *page = alloc_page();
  double t0 = now();
  for (int i = 0; i < map_iters; i++) {
    map_dma(page, 0x1000, PAGE);
    unmap_dma(0x1000, PAGE);
  }
  double map_s = now() - t0;

  /* mmap + map + unmap + munmap: what bus_dmamem alloc + free does. */
  t0 = now();
  for (int i = 0; i < alloc_iters; i++) {
    void *p = alloc_page();
    map_dma(p, 0x1000, PAGE);
    unmap_dma(0x1000, PAGE);
    munmap(p, PAGE);
  }
  double alloc_s = now() - t0;

  /* edu DMA copies: RAM -> device and device -> RAM, polling for completion. */
  uint8_t *src = alloc_page(), *dst = alloc_page();
  map_dma(src, 0x1000, PAGE);
  map_dma(dst, 0x3000, PAGE);
  for (int i = 0; i < PAGE; i++) src[i] = (uint8_t)(i * 7 + 3);
  vfio_ref_bus_master(&ref, 1);
  double to_dev = 0, to_ram = 0;
  for (int i = 0; i < transfers; i++) {
    t0 = now();
    edu_dma(0x1000, EDU_BUF, xfer, 0);
    double t1 = now();
    edu_dma(EDU_BUF, 0x3000, xfer, 1);
    to_dev += t1 - t0;
    to_ram += now() - t1;
  }
  vfio_ref_bus_master(&ref, 0);
  int ok = memcmp(src, dst, xfer) == 0;
  unmap_dma(0x1000, PAGE);
  unmap_dma(0x3000, PAGE);

  printf("{\"impl\":\"c\",\"mapOpsPerSec\":%.1f,\"allocOpsPerSec\":%.1f,\"toDeviceUs\":%.1f,\"toRamUs\":%.1f,\"copyOk\":%s}\n",
         map_iters / map_s, alloc_iters / alloc_s, to_dev / transfers * 1e6, to_ram / transfers * 1e6, ok ? "true" : "false");
  vfio_ref_close(&ref);
  return ok ? 0 : 1;
}
