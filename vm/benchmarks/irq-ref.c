/*
 * C reference for vm/benchmarks/irq.ts: edu's MSI round trip with raw VFIO
 * (write the raise register, block in read(2) on the MSI eventfd, read and
 * ack the status), the floor upci's interrupt path is measured against.
 *
 *   irq-ref <pci-address> <iterations>
 *
 * Prints one JSON line: median and p99 round trip in microseconds.
 */
#include <sys/eventfd.h>

#include "vfio-ref.h"

#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64

static int by_value(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: irq-ref <pci-address> <iterations>\n");
		return 2;
	}
	int iterations = atoi(argv[2]);
	struct vfio_ref ref;
	vfio_ref_open(&ref, argv[1]);
	vfio_ref_bus_master(&ref, 1);

	int efd = eventfd(0, EFD_CLOEXEC);
	if (efd < 0) die("eventfd");
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
	*set = (struct vfio_irq_set){.argsz = sizeof buf, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
	    .index = VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 1};
	memcpy(set->data, &efd, sizeof efd);
	if (ioctl(ref.dev, VFIO_DEVICE_SET_IRQS, set)) die("VFIO_DEVICE_SET_IRQS");

	double *us = calloc(iterations, sizeof *us);
	uint64_t count;
	for (int i = 0; i < iterations; i++) {
		double t0 = now();
		w32(&ref, EDU_IRQ_RAISE, 1);
		if (read(efd, &count, sizeof count) != sizeof count) die("read eventfd");
		w32(&ref, EDU_IRQ_ACK, r32(&ref, EDU_IRQ_STATUS));
		us[i] = (now() - t0) * 1e6;
	}
	qsort(us, iterations, sizeof *us, by_value);
	printf("{\"median\":%.1f,\"p99\":%.1f}\n", us[iterations / 2], us[iterations * 99 / 100]);

	*set = (struct vfio_irq_set){.argsz = sizeof *set, .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
	    .index = VFIO_PCI_MSI_IRQ_INDEX};
	ioctl(ref.dev, VFIO_DEVICE_SET_IRQS, set);
	vfio_ref_bus_master(&ref, 0);
	vfio_ref_close(&ref);
	return 0;
}
