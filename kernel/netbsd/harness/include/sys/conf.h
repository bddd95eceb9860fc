/* Harness stand-in: every kernel header pci_user.c includes is kstub.h. */
#include "../../kstub.h"
