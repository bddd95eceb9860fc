/*
 * Minimal stand-in for NetBSD's <sys/ioccom.h>, for computing the
 * pciuserio.h ioctl numbers on a host that has no NetBSD headers.
 * Written from the encoding documented in ioctl(2)/ioccom: direction
 * in bits 29-31, parameter length in bits 16-28, group in bits 8-15,
 * number in bits 0-7.  compile-check.sh verifies that it yields the
 * same values as a real NetBSD sys/ioccom.h.
 */
#ifndef _SYS_IOCCOM_H_
#define	_SYS_IOCCOM_H_

#define	IOCPARM_MASK	0x1fff
#define	IOCPARM_SHIFT	16
#define	IOCGROUP_SHIFT	8
#define	IOC_VOID	(unsigned long)0x20000000
#define	IOC_OUT		(unsigned long)0x40000000
#define	IOC_IN		(unsigned long)0x80000000
#define	IOC_INOUT	(IOC_IN|IOC_OUT)

#define	_IOC(inout, group, num, len) \
    ((inout) | (((len) & IOCPARM_MASK) << IOCPARM_SHIFT) | \
    ((group) << IOCGROUP_SHIFT) | (num))
#define	_IO(g,n)	_IOC(IOC_VOID,	(g), (n), 0)
#define	_IOR(g,n,t)	_IOC(IOC_OUT,	(g), (n), sizeof(t))
#define	_IOW(g,n,t)	_IOC(IOC_IN,	(g), (n), sizeof(t))
#define	_IOWR(g,n,t)	_IOC(IOC_INOUT,	(g), (n), sizeof(t))

#endif /* !_SYS_IOCCOM_H_ */
