/*
 * What the C references of vm/benchmarks share: opening an edu through raw
 * VFIO (container, group, device, BAR0 mapped, config region found) and
 * register access, so each reference holds only the work it measures.
 */
#ifndef UPCI_VFIO_REF_H
#define UPCI_VFIO_REF_H

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

struct vfio_ref {
	int container, group, dev;
	volatile uint8_t *bar;
	uint64_t bar_size, cfg_offset;
};

static inline void die(const char *what) {
	fprintf(stderr, "vfio-ref: %s: %s\n", what, strerror(errno));
	exit(1);
}

static inline double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline void vfio_ref_open(struct vfio_ref *r, const char *addr) {
	char path[320], link[256];
	snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", addr);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n < 0) die(path);
	link[n] = 0;
	const char *slash = strrchr(link, '/');
	snprintf(path, sizeof path, "/dev/vfio/%s", slash ? slash + 1 : link);

	r->container = open("/dev/vfio/vfio", O_RDWR);
	if (r->container < 0) die("/dev/vfio/vfio");
	r->group = open(path, O_RDWR);
	if (r->group < 0) die(path);
	if (ioctl(r->group, VFIO_GROUP_SET_CONTAINER, &r->container)) die("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(r->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("VFIO_SET_IOMMU");
	r->dev = ioctl(r->group, VFIO_GROUP_GET_DEVICE_FD, addr);
	if (r->dev < 0) die("VFIO_GROUP_GET_DEVICE_FD");

	struct vfio_region_info reg = {.argsz = sizeof reg, .index = VFIO_PCI_BAR0_REGION_INDEX};
	if (ioctl(r->dev, VFIO_DEVICE_GET_REGION_INFO, &reg)) die("VFIO_DEVICE_GET_REGION_INFO");
	r->bar = mmap(NULL, reg.size, PROT_READ | PROT_WRITE, MAP_SHARED, r->dev, reg.offset);
	if (r->bar == MAP_FAILED) die("mmap BAR0");
	r->bar_size = reg.size;
	struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
	if (ioctl(r->dev, VFIO_DEVICE_GET_REGION_INFO, &cfg)) die("VFIO_DEVICE_GET_REGION_INFO config");
	r->cfg_offset = cfg.offset;
}

static inline void vfio_ref_bus_master(struct vfio_ref *r, int on) {
	uint16_t cmd;
	if (pread(r->dev, &cmd, 2, r->cfg_offset + 4) != 2) die("pread command");
	cmd = on ? (cmd | 4) : (cmd & ~4);
	if (pwrite(r->dev, &cmd, 2, r->cfg_offset + 4) != 2) die("pwrite command");
}

static inline void vfio_ref_close(struct vfio_ref *r) {
	munmap((void *)r->bar, r->bar_size);
	close(r->dev);
	close(r->group);
	close(r->container);
}

static inline void w32(struct vfio_ref *r, unsigned off, uint32_t v) { *(volatile uint32_t *)(r->bar + off) = v; }
static inline void w64(struct vfio_ref *r, unsigned off, uint64_t v) { *(volatile uint64_t *)(r->bar + off) = v; }
static inline uint32_t r32(struct vfio_ref *r, unsigned off) { return *(volatile uint32_t *)(r->bar + off); }

#endif
