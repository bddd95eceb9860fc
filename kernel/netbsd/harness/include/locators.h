/* Harness stand-in of config(1)'s locators.h, pci attribute only. */
#define	PCICF_DEV		0
#define	PCICF_DEV_DEFAULT	-1
#define	PCICF_FUNCTION		1
#define	PCICF_FUNCTION_DEFAULT	-1
#define	PCICF_NLOCS		2
