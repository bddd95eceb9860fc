/**
 * <linux/ublk_cmd.h>, the parts upci's ublk export uses: the control
 * commands sent on /dev/ublk-control, the I/O commands on /dev/ublkcN, and
 * the structs they carry. Layouts, opcodes and flags are checked against the
 * installed header by test/unit/ublk-abi.test.ts (the host's header may be
 * older than the guest kernel: it is checked for what it has).
 */
import { Struct } from '../abi.js';

/** The ioctl encoding ublk's commands use (UBLK_U_*; the bare UBLK_CMD_* numbers are the legacy ones). */
const IOC_WRITE = 1;
const IOC_READ = 2;
const ioc = (dir: number, nr: number, size: number): number => ((dir << 30) | (size << 16) | (0x75 /* 'u' */ << 8) | nr) >>> 0;

// Named as the 6.1 header names them (the host's, which the test compiles against); 6.2+ splits
// data[1] into dev_path_len/pad/reserved and reserved0 into owner_uid/owner_gid. upci sends zeros there.
export const ublksrvCtrlCmd = new Struct('ublksrv_ctrl_cmd', {
  dev_id: 'u32', queue_id: 'u16', len: 'u16', addr: 'u64', 'data[0]': 'u64', 'data[1]': 'u64',
});

export const ublksrvCtrlDevInfo = new Struct('ublksrv_ctrl_dev_info', {
  nr_hw_queues: 'u16', queue_depth: 'u16', state: 'u16', pad0: 'u16',
  max_io_buf_bytes: 'u32', dev_id: 'u32', ublksrv_pid: 'u32', pad1: 'u32',
  flags: 'u64', ublksrv_flags: 'u64', reserved0: 'u64', reserved1: 'u64', reserved2: 'u64',
});

export const ublksrvIoDesc = new Struct('ublksrv_io_desc', {
  op_flags: 'u32', nr_sectors: 'u32', start_sector: 'u64', addr: 'u64',
});

export const ublksrvIoCmd = new Struct('ublksrv_io_cmd', {
  q_id: 'u16', tag: 'u16', result: 'u32', addr: 'u64',
});

/** struct ublk_params up to its discard member (what SET_PARAMS reads with `len` = this size). */
export const ublkParams = new Struct('ublk_params', {
  len: 'u32', types: 'u32',
  'basic.attrs': 'u32', 'basic.logical_bs_shift': 'u8', 'basic.physical_bs_shift': 'u8',
  'basic.io_opt_shift': 'u8', 'basic.io_min_shift': 'u8', 'basic.max_sectors': 'u32',
  'basic.chunk_sectors': 'u32', 'basic.dev_sectors': 'u64', 'basic.virt_boundary_mask': 'u64',
  'discard.discard_alignment': 'u32', 'discard.discard_granularity': 'u32',
  'discard.max_discard_sectors': 'u32', 'discard.max_write_zeroes_sectors': 'u32',
  'discard.max_discard_segments': 'u16', 'discard.reserved0': 'u16',
});
/** Bytes of ublk_params that SET_PARAMS takes from us: through discard, before devt (6.2+). */
export const UBLK_PARAMS_LEN = ublkParams.fields['discard.reserved0'].offset + 2;

export const ublkStructs = [ublksrvCtrlCmd, ublksrvCtrlDevInfo, ublksrvIoDesc, ublksrvIoCmd] as const;

/** Legacy numbers (_IOC_NR of the encoded ones). */
export const UBLK_CMD_GET_DEV_INFO = 0x02;
export const UBLK_CMD_ADD_DEV = 0x04;
export const UBLK_CMD_DEL_DEV = 0x05;
export const UBLK_CMD_START_DEV = 0x06;
export const UBLK_CMD_STOP_DEV = 0x07;
export const UBLK_CMD_SET_PARAMS = 0x08;
export const UBLK_CMD_START_USER_RECOVERY = 0x10;
export const UBLK_CMD_END_USER_RECOVERY = 0x11;
export const UBLK_IO_FETCH_REQ = 0x20;
export const UBLK_IO_COMMIT_AND_FETCH_REQ = 0x21;

const ctrl = (dir: number, nr: number) => ioc(dir, nr, ublksrvCtrlCmd.size);
const io = (nr: number) => ioc(IOC_READ | IOC_WRITE, nr, ublksrvIoCmd.size);
/** As <linux/ublk_cmd.h> (6.3+) defines UBLK_U_CMD_* and UBLK_U_IO_*. */
export const ops = {
  UBLK_U_CMD_GET_DEV_INFO: ctrl(IOC_READ, UBLK_CMD_GET_DEV_INFO),
  UBLK_U_CMD_ADD_DEV: ctrl(IOC_READ | IOC_WRITE, UBLK_CMD_ADD_DEV),
  UBLK_U_CMD_DEL_DEV: ctrl(IOC_READ | IOC_WRITE, UBLK_CMD_DEL_DEV),
  UBLK_U_CMD_START_DEV: ctrl(IOC_READ | IOC_WRITE, UBLK_CMD_START_DEV),
  UBLK_U_CMD_STOP_DEV: ctrl(IOC_READ | IOC_WRITE, UBLK_CMD_STOP_DEV),
  UBLK_U_CMD_SET_PARAMS: ctrl(IOC_READ | IOC_WRITE, UBLK_CMD_SET_PARAMS),
  UBLK_U_CMD_START_USER_RECOVERY: ctrl(IOC_READ | IOC_WRITE, UBLK_CMD_START_USER_RECOVERY),
  UBLK_U_CMD_END_USER_RECOVERY: ctrl(IOC_READ | IOC_WRITE, UBLK_CMD_END_USER_RECOVERY),
  UBLK_U_IO_FETCH_REQ: io(UBLK_IO_FETCH_REQ),
  UBLK_U_IO_COMMIT_AND_FETCH_REQ: io(UBLK_IO_COMMIT_AND_FETCH_REQ),
} as const;

/** A FETCH/COMMIT completion's res: a request is in the descriptor; the queue is going away (-ENODEV). */
export const UBLK_IO_RES_OK = 0;
export const UBLK_IO_RES_ABORT = -19;

export const UBLK_IO_OP_READ = 0;
export const UBLK_IO_OP_WRITE = 1;
export const UBLK_IO_OP_FLUSH = 2;
export const UBLK_IO_OP_DISCARD = 3;
export const UBLK_IO_OP_WRITE_SAME = 4;
export const UBLK_IO_OP_WRITE_ZEROES = 5;

export const UBLK_F_URING_CMD_COMP_IN_TASK = 1 << 1;
export const UBLK_F_USER_RECOVERY = 1 << 3;
export const UBLK_F_USER_RECOVERY_REISSUE = 1 << 4;
export const UBLK_F_CMD_IOCTL_ENCODE = 1 << 6;

export const UBLK_ATTR_VOLATILE_CACHE = 1 << 2;
export const UBLK_PARAM_TYPE_BASIC = 1 << 0;
export const UBLK_PARAM_TYPE_DISCARD = 1 << 1;

/** The per-queue descriptor area of /dev/ublkcN: queue q's at q × UBLK_MAX_QUEUE_DEPTH descriptors. */
export const UBLKSRV_CMD_BUF_OFFSET = 0;
export const UBLK_MAX_QUEUE_DEPTH = 4096;
export const UBLK_S_DEV_DEAD = 0;
export const UBLK_S_DEV_LIVE = 1;
export const UBLK_S_DEV_QUIESCED = 2;
