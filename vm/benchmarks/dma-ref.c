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
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_BUF 0x40000ULL
#define PAGE 4096

static void die(const char *what) {
  fprintf(stderr, "dma-ref: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int container;

static void map_dma(void *vaddr, uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_map m = {
      .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      .vaddr = (uintptr_t)vaddr, .iova = iova, .size = size};
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) die("VFIO_IOMMU_MAP_DMA");
}

static void unmap_dma(uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = size};
  if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) || u.size != size) die("VFIO_IOMMU_UNMAP_DMA");
}

static void *alloc_page(void) {
  void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  return p;
}

static volatile uint8_t *bar;

static void w32(unsigned off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static void w64(unsigned off, uint64_t v) { *(volatile uint64_t *)(bar + off) = v; }
static uint32_t r32(unsigned off) { return *(volatile uint32_t *)(bar + off); }

static void edu_dma(uint64_t src, uint64_t dst, uint32_t count, int to_ram) {
  w64(EDU_DMA_SRC, src);
  w64(EDU_DMA_DST, dst);
  w32(EDU_DMA_COUNT, count);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  w32(EDU_DMA_CMD, 1 | (to_ram ? 2 : 0));
  while (r32(EDU_DMA_CMD) & 1) {
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

  char path[320], link[256];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", addr);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) die(path);
  link[n] = 0;
  const char *slash = strrchr(link, '/');
  snprintf(path, sizeof path, "/dev/vfio/%s", slash ? slash + 1 : link);

  container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) die("/dev/vfio/vfio");
  int group = open(path, O_RDWR);
  if (group < 0) die(path);
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("VFIO_GROUP_SET_CONTAINER");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("VFIO_SET_IOMMU");
  int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, addr);
  if (dev < 0) die("VFIO_GROUP_GET_DEVICE_FD");

  struct vfio_region_info reg = {.argsz = sizeof reg, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &reg)) die("VFIO_DEVICE_GET_REGION_INFO");
  bar = mmap(NULL, reg.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, reg.offset);
  if (bar == MAP_FAILED) die("mmap BAR0");
  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg)) die("VFIO_DEVICE_GET_REGION_INFO config");

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
  uint16_t cmd;
  if (pread(dev, &cmd, 2, cfg.offset + 4) != 2) die("pread command");
  cmd |= 4; /* bus master */
  if (pwrite(dev, &cmd, 2, cfg.offset + 4) != 2) die("pwrite command");
  double to_dev = 0, to_ram = 0;
  for (int i = 0; i < transfers; i++) {
    t0 = now();
    edu_dma(0x1000, EDU_BUF, xfer, 0);
    double t1 = now();
    edu_dma(EDU_BUF, 0x3000, xfer, 1);
    to_dev += t1 - t0;
    to_ram += now() - t1;
  }
  cmd &= ~4;
  if (pwrite(dev, &cmd, 2, cfg.offset + 4) != 2) die("pwrite command");
  int ok = memcmp(src, dst, xfer) == 0;
  unmap_dma(0x1000, PAGE);
  unmap_dma(0x3000, PAGE);

  printf("{\"impl\":\"c\",\"mapOpsPerSec\":%.1f,\"allocOpsPerSec\":%.1f,\"toDeviceUs\":%.1f,\"toRamUs\":%.1f,\"copyOk\":%s}\n",
         map_iters / map_s, alloc_iters / alloc_s, to_dev / transfers * 1e6, to_ram / transfers * 1e6, ok ? "true" : "false");
  munmap((void *)bar, reg.size);
  close(dev);
  close(group);
  close(container);
  return ok ? 0 : 1;
}
