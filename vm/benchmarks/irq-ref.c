/*
 * C reference for vm/benchmarks/irq.ts: edu's MSI round trip with raw VFIO
 * (write the raise register, wait for the MSI eventfd, read and ack the
 * status), the floor upci's interrupt path is measured against. Two shapes:
 *
 *   direct    the handler thread itself blocks in read(2) on the eventfd;
 *   threaded  upci's shape: a waiter thread blocks in epoll_wait, reads the
 *             eventfd and wakes the handler thread through a futex.
 *
 *   irq-ref <pci-address> <iterations> direct|threaded
 *
 * Prints one JSON line: each round trip in microseconds, in order, so that
 * the caller can pool runs interleaved with the other paths it measures.
 */
#include <linux/futex.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

#include "vfio-ref.h"

#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64

static int efd;
static _Atomic uint32_t delivered;

static void futex(_Atomic uint32_t *word, int op, uint32_t value) {
	syscall(SYS_futex, word, op, value, NULL, NULL, 0);
}

/* The waiter thread of the threaded shape: what upci's interrupt worker does. */
static void *waiter(void *arg) {
	int iterations = *(int *)arg;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN};
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev)) die("epoll");
	uint64_t count;
	for (int i = 0; i < iterations; i++) {
		if (epoll_wait(ep, &ev, 1, -1) != 1) die("epoll_wait");
		if (read(efd, &count, sizeof count) != sizeof count) die("read eventfd");
		delivered++;
		futex(&delivered, FUTEX_WAKE_PRIVATE, 1);
	}
	close(ep);
	return NULL;
}

static void wait_delivery(uint32_t seen) {
	while (delivered == seen)
		futex(&delivered, FUTEX_WAIT_PRIVATE, seen);
}

int main(int argc, char **argv) {
	if (argc != 4 || (strcmp(argv[3], "direct") && strcmp(argv[3], "threaded"))) {
		fprintf(stderr, "usage: irq-ref <pci-address> <iterations> direct|threaded\n");
		return 2;
	}
	int iterations = atoi(argv[2]);
	int threaded = !strcmp(argv[3], "threaded");
	struct vfio_ref ref;
	vfio_ref_open(&ref, argv[1]);
	vfio_ref_bus_master(&ref, 1);

	efd = eventfd(0, EFD_CLOEXEC);
	if (efd < 0) die("eventfd");
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
	*set = (struct vfio_irq_set){.argsz = sizeof buf, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
	    .index = VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 1};
	memcpy(set->data, &efd, sizeof efd);
	if (ioctl(ref.dev, VFIO_DEVICE_SET_IRQS, set)) die("VFIO_DEVICE_SET_IRQS");

	pthread_t thread;
	if (threaded && pthread_create(&thread, NULL, waiter, &iterations)) die("pthread_create");
	double *us = calloc(iterations, sizeof *us);
	uint64_t count;
	for (int i = 0; i < iterations; i++) {
		uint32_t seen = delivered;
		double t0 = now();
		w32(&ref, EDU_IRQ_RAISE, 1);
		if (threaded)
			wait_delivery(seen);
		else if (read(efd, &count, sizeof count) != sizeof count)
			die("read eventfd");
		w32(&ref, EDU_IRQ_ACK, r32(&ref, EDU_IRQ_STATUS));
		us[i] = (now() - t0) * 1e6;
	}
	if (threaded) pthread_join(thread, NULL);
	printf("[");
	for (int i = 0; i < iterations; i++)
		printf("%s%.1f", i ? "," : "", us[i]);
	printf("]\n");

	*set = (struct vfio_irq_set){.argsz = sizeof *set, .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
	    .index = VFIO_PCI_MSI_IRQ_INDEX};
	ioctl(ref.dev, VFIO_DEVICE_SET_IRQS, set);
	vfio_ref_bus_master(&ref, 0);
	vfio_ref_close(&ref);
	return 0;
}
