import test from 'ava';
import * as abi from '../../kernel/linux/ublk-abi.js';
import { expectedLayout, layoutProbe, runCProbe } from '../support/c-probe.js';

// The host's header may be older than the guest's kernel (Debian 12's is 6.1's): what it has is checked.
test('ublk struct layouts match <linux/ublk_cmd.h>', (t) => {
  const structs = [...abi.ublkStructs, abi.ublkParams];
  const source = `#include <stdio.h>\n#include <stddef.h>\n#include <linux/ublk_cmd.h>\nint main(void) {\n  ${layoutProbe(structs)}\n  return 0;\n}\n`;
  const layout = runCProbe(source) as Record<string, { size: number }>;
  const expected = expectedLayout(structs) as Record<string, { size: number }>;
  // ublk_params grows with the kernel (devt, zoned...): only the offsets of what upci sends are compared.
  t.true(layout.ublk_params!.size >= abi.UBLK_PARAMS_LEN);
  layout.ublk_params!.size = expected.ublk_params!.size;
  t.deepEqual(layout, expected);
});

test('ublk command numbers, flags and the ioctl encoding match <linux/ublk_cmd.h>', (t) => {
  const names = [
    'UBLK_CMD_GET_DEV_INFO', 'UBLK_CMD_ADD_DEV', 'UBLK_CMD_DEL_DEV', 'UBLK_CMD_START_DEV', 'UBLK_CMD_STOP_DEV',
    'UBLK_CMD_SET_PARAMS', 'UBLK_CMD_START_USER_RECOVERY', 'UBLK_CMD_END_USER_RECOVERY', 'UBLK_IO_FETCH_REQ',
    'UBLK_IO_COMMIT_AND_FETCH_REQ', 'UBLK_IO_RES_OK', 'UBLK_IO_RES_ABORT', 'UBLK_IO_OP_READ', 'UBLK_IO_OP_WRITE',
    'UBLK_IO_OP_FLUSH', 'UBLK_IO_OP_DISCARD', 'UBLK_IO_OP_WRITE_SAME', 'UBLK_IO_OP_WRITE_ZEROES',
    'UBLK_F_URING_CMD_COMP_IN_TASK', 'UBLK_F_USER_RECOVERY', 'UBLK_F_USER_RECOVERY_REISSUE', 'UBLK_ATTR_VOLATILE_CACHE',
    'UBLK_PARAM_TYPE_BASIC', 'UBLK_PARAM_TYPE_DISCARD', 'UBLKSRV_CMD_BUF_OFFSET', 'UBLK_MAX_QUEUE_DEPTH',
    'UBLK_S_DEV_DEAD', 'UBLK_S_DEV_LIVE', 'UBLK_S_DEV_QUIESCED',
  ];
  const prints = names.map((n, i) => `printf("%s\\"${n}\\": %ld", ${i === 0 ? '""' : '", "'}, (long)(${n}));`).join('\n  ');
  // _IOWR/_IOR of the structs, as 6.3+ headers define UBLK_U_*: checked through <linux/ioctl.h> with the host's structs.
  const encoded = Object.keys(abi.ops).map((n) => {
    const [, kind, legacy] = /^UBLK_U_(CMD|IO)_(.+)$/.exec(n)!;
    const nr = kind === 'CMD' ? `UBLK_CMD_${legacy}` : `UBLK_IO_${legacy}`;
    const struct = kind === 'CMD' ? 'ublksrv_ctrl_cmd' : 'ublksrv_io_cmd';
    const macro = n === 'UBLK_U_CMD_GET_DEV_INFO' ? '_IOR' : '_IOWR';
    return `printf(", \\"${n}\\": %lu", (unsigned long)${macro}('u', ${nr}, struct ${struct}));`;
  }).join('\n  ');
  const source = `#include <stdio.h>\n#include <errno.h>\n#include <linux/ioctl.h>\n#include <linux/ublk_cmd.h>\nint main(void) {\n  printf("{");\n  ${prints}\n  ${encoded}\n  printf("}\\n");\n  return 0;\n}\n`;
  const ours = { ...Object.fromEntries(names.map((n) => [n, (abi as Record<string, unknown>)[n]])), ...abi.ops };
  t.deepEqual(runCProbe(source), ours);
});
