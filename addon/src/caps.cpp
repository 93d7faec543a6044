// SPDX-License-Identifier: Apache-2.0
// Dropping capabilities for the whole process, every thread of it.
//
// Linux keeps the capability sets, the bounding set and no_new_privs per
// thread, and capset() and prctl() change only the calling thread. By the time
// JavaScript asks for the drop Node runs a dozen threads (libuv's pool, V8's
// platform workers, the inspector's SIGUSR1 watchdog), and each must drop its
// own. The calling thread drops directly; every other thread listed in
// /proc/self/task is sent a signal whose handler makes the same raw system
// calls on that thread, and the caller waits until each has answered. Threads
// started meanwhile are found by listing again; threads started later inherit
// the reduced sets from the thread that creates them.
//
// The signal is 33, the second real-time signal in the kernel's numbering.
// Node's inspector watchdog thread blocks every signal it can: all but the two
// real-time signals the C library keeps for itself (glibc: 32, SIGCANCEL, and
// 33, SIGSETXID), which glibc never lets a thread block. Our handler stands in
// for glibc's only while the drop runs, knows our signals by their si_code
// (SI_QUEUE), sender and cookie, and passes any other one (a setuid()
// broadcast sends SI_TKILL) on to the handler it replaced. glibc's handler in
// turn ignores a queued signal, should one of ours arrive after it is back.
#include "caps.hpp"

#include <dirent.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bpf_error.hpp"

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

namespace tcptracer
{

namespace
{

constexpr int kSignal = 33;
constexpr uint32_t kMaxThreads = 1024;
constexpr int kMaxRounds = 16;
constexpr long kAnswerTimeoutMs = 5000;
constexpr int kCapBpf = 39;

// rt_sigaction(2)'s own struct sigaction (not the C library's).
struct KernelSigaction {
	void *handler;
	unsigned long flags;
	void (*restorer)(void);
	uint64_t mask;
};

enum Step {
	kStepDone,
	kStepCapget,
	kStepBounding,
	kStepAmbient,
	kStepNoNewPrivs,
	kStepCapset,
};

const char *StepName(int step)
{
	switch (step) {
	case kStepCapget:
		return "capget";
	case kStepBounding:
		return "prctl(PR_CAPBSET_DROP)";
	case kStepAmbient:
		return "prctl(PR_CAP_AMBIENT_CLEAR_ALL)";
	case kStepNoNewPrivs:
		return "prctl(PR_SET_NO_NEW_PRIVS)";
	case kStepCapset:
		return "capset";
	default:
		return "none";
	}
}

struct Slot {
	std::atomic<pid_t> tid{0};
	std::atomic<int> state{0}; // 0 free, 1 signalled, 2 answered
	std::atomic<int> err{0};
	std::atomic<int> step{0};
};

// Set before any signal is sent, read by the handler.
uint64_t keep_mask;
int last_cap;
std::atomic<uint32_t> generation{0};
Slot slots[kMaxThreads];
KernelSigaction replaced;

uint64_t Bit(int cap)
{
	return 1ULL << cap;
}

pid_t Tid()
{
	return static_cast<pid_t>(syscall(SYS_gettid));
}

uint64_t Join(uint32_t lo, uint32_t hi)
{
	return static_cast<uint64_t>(lo) | static_cast<uint64_t>(hi) << 32;
}

// The calling thread's sets, by capget(2).
int CapGet(struct __user_cap_data_struct data[2])
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	memset(data, 0, 2 * sizeof(*data));
	return syscall(SYS_capget, &hdr, data) ? errno : 0;
}

int CapSet(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	data[0].effective = static_cast<uint32_t>(eff);
	data[1].effective = static_cast<uint32_t>(eff >> 32);
	data[0].permitted = static_cast<uint32_t>(prm);
	data[1].permitted = static_cast<uint32_t>(prm >> 32);
	data[0].inheritable = static_cast<uint32_t>(inh);
	data[1].inheritable = static_cast<uint32_t>(inh >> 32);
	return syscall(SYS_capset, &hdr, data) ? errno : 0;
}

// Reduce the calling thread to keep_mask. Raw system calls only: this also
// runs in the signal handler. Returns 0, or the errno with *step the call that
// failed.
int DropThisThread(int *step)
{
	struct __user_cap_data_struct data[2];
	*step = kStepCapget;
	int err = CapGet(data);
	if (err)
		return err;
	uint64_t eff = Join(data[0].effective, data[1].effective);
	uint64_t prm = Join(data[0].permitted, data[1].permitted);
	// the bounding set first: dropping from it needs CAP_SETPCAP, which goes below
	if (eff & Bit(CAP_SETPCAP)) {
		*step = kStepBounding;
		for (int c = 0; c <= last_cap; c++)
			if (!(keep_mask & Bit(c)) &&
			    syscall(SYS_prctl, PR_CAPBSET_DROP, c, 0, 0, 0))
				return errno;
	}
	*step = kStepAmbient;
	if (syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
		return errno;
	// no execve() can give capabilities back: not file capabilities, not root's
	*step = kStepNoNewPrivs;
	if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return errno;
	*step = kStepCapset;
	uint64_t want = prm & keep_mask;
	err = CapSet(want, want, 0);
	if (err)
		return err;
	*step = kStepDone;
	return 0;
}

void OnSignal(int sig, siginfo_t *si, void *ctx)
{
	int saved = errno;
	uint64_t cookie = reinterpret_cast<uintptr_t>(si->si_value.sival_ptr);
	uint32_t gen = static_cast<uint32_t>(cookie >> 32);
	uint32_t idx = static_cast<uint32_t>(cookie);
	if (si->si_code == SI_QUEUE && si->si_pid == getpid() && gen == generation.load() &&
	    idx < kMaxThreads && slots[idx].tid.load() == Tid() && slots[idx].state.load() == 1) {
		int step = kStepDone;
		int err = DropThisThread(&step);
		slots[idx].err.store(err);
		slots[idx].step.store(step);
		slots[idx].state.store(2);
	} else if (replaced.handler != reinterpret_cast<void *>(SIG_DFL) &&
		   replaced.handler != reinterpret_cast<void *>(SIG_IGN)) {
		// not ours: the C library's own use of the signal
		if (replaced.flags & SA_SIGINFO)
			reinterpret_cast<void (*)(int, siginfo_t *, void *)>(replaced.handler)(
			    sig, si, ctx);
		else
			reinterpret_cast<void (*)(int)>(replaced.handler)(sig);
	}
	errno = saved;
}

int RtSigaction(int sig, const KernelSigaction *act, KernelSigaction *old)
{
	return syscall(SYS_rt_sigaction, sig, act, old, sizeof(uint64_t)) ? errno : 0;
}

int LastCap()
{
	FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
	int n = -1;
	if (f) {
		if (fscanf(f, "%d", &n) != 1)
			n = -1;
		fclose(f);
	}
	return n >= 0 && n < 64 ? n : CAP_LAST_CAP;
}

std::vector<pid_t> ListThreads()
{
	std::vector<pid_t> out;
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return out;
	while (struct dirent *e = readdir(d)) {
		char *end = nullptr;
		long tid = strtol(e->d_name, &end, 10);
		if (end != e->d_name && *end == '\0' && tid > 0)
			out.push_back(static_cast<pid_t>(tid));
	}
	closedir(d);
	return out;
}

bool Alive(pid_t pid, pid_t tid)
{
	return !(syscall(SYS_tgkill, pid, tid, 0) && errno == ESRCH);
}

long NowMs()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// One thread's /proc/self/task/TID/status fields that the drop sets.
struct ThreadState {
	bool ok = false;
	std::string comm;
	uint64_t inh = 0, prm = 0, eff = 0, bnd = 0, amb = 0, sigblk = 0;
	int nnp = -1;
};

ThreadState ReadThread(pid_t tid)
{
	ThreadState st;
	std::string path = "/proc/self/task/" + std::to_string(tid) + "/status";
	FILE *f = fopen(path.c_str(), "re");
	if (!f)
		return st;
	char line[4096];
	while (fgets(line, sizeof(line), f)) {
		char *v = strchr(line, ':');
		if (!v)
			continue;
		*v++ = '\0';
		while (*v == ' ' || *v == '\t')
			v++;
		v[strcspn(v, "\n")] = '\0';
		std::string k(line);
		uint64_t hex = strtoull(v, nullptr, 16);
		if (k == "Name")
			st.comm = v;
		else if (k == "CapInh")
			st.inh = hex;
		else if (k == "CapPrm")
			st.prm = hex;
		else if (k == "CapEff")
			st.eff = hex;
		else if (k == "CapBnd")
			st.bnd = hex;
		else if (k == "CapAmb")
			st.amb = hex;
		else if (k == "SigBlk")
			st.sigblk = hex;
		else if (k == "NoNewPrivs")
			st.nnp = atoi(v);
	}
	fclose(f);
	st.ok = true;
	return st;
}

std::string Hex(uint64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
	return buf;
}

std::string Describe(pid_t tid)
{
	ThreadState st = ReadThread(tid);
	return "thread " + std::to_string(tid) + (st.comm.empty() ? "" : " (" + st.comm + ")");
}

// Signal every other thread until a listing finds none left; returns 0 or an
// errno with *detail saying which thread and step.
int DropOtherThreads(pid_t pid, pid_t self, int *threads, std::string *detail)
{
	std::vector<pid_t> done;
	auto is_done = [&](pid_t t) {
		for (pid_t d : done)
			if (d == t)
				return true;
		return false;
	};
	uint32_t gen = generation.load();
	for (int round = 0; round < kMaxRounds; round++) {
		std::vector<std::pair<uint32_t, pid_t>> sent;
		for (pid_t tid : ListThreads()) {
			if (tid == self || is_done(tid))
				continue;
			if (sent.size() >= kMaxThreads) {
				*detail = "more than " + std::to_string(kMaxThreads) + " threads";
				return E2BIG;
			}
			uint32_t idx = static_cast<uint32_t>(sent.size());
			slots[idx].err.store(0);
			slots[idx].step.store(kStepDone);
			slots[idx].tid.store(tid);
			slots[idx].state.store(1);
			siginfo_t si;
			memset(&si, 0, sizeof(si));
			si.si_signo = kSignal;
			si.si_code = SI_QUEUE;
			si.si_pid = pid;
			si.si_uid = getuid();
			si.si_value.sival_ptr =
			    reinterpret_cast<void *>(static_cast<uintptr_t>(gen) << 32 | idx);
			if (syscall(SYS_rt_tgsigqueueinfo, pid, tid, kSignal, &si)) {
				int err = errno;
				slots[idx].state.store(0);
				if (err == ESRCH) // it ended meanwhile
					continue;
				*detail = "rt_tgsigqueueinfo(" + Describe(tid) + ")";
				return err;
			}
			sent.emplace_back(idx, tid);
		}
		if (sent.empty())
			return 0;
		long deadline = NowMs() + kAnswerTimeoutMs;
		for (;;) {
			size_t waiting = 0;
			for (auto &[idx, tid] : sent) {
				if (slots[idx].state.load() == 2 || is_done(tid))
					continue;
				if (!Alive(pid, tid)) {
					slots[idx].state.store(0);
					continue;
				}
				waiting++;
			}
			if (waiting == 0)
				break;
			if (NowMs() > deadline) {
				for (auto &[idx, tid] : sent) {
					if (slots[idx].state.load() != 1 || !Alive(pid, tid))
						continue;
					ThreadState st = ReadThread(tid);
					bool blocked = st.sigblk & Bit(kSignal - 1);
					*detail = Describe(tid) + " did not answer signal " +
						  std::to_string(kSignal) + " within " +
						  std::to_string(kAnswerTimeoutMs / 1000) + " s" +
						  (blocked ? ": it blocks that signal" : "");
					return ETIMEDOUT;
				}
				break;
			}
			struct timespec ms = {0, 1000000};
			nanosleep(&ms, nullptr);
		}
		for (auto &[idx, tid] : sent) {
			if (slots[idx].state.load() != 2)
				continue;
			slots[idx].state.store(0);
			if (int err = slots[idx].err.load()) {
				*detail = Describe(tid) + ": " + StepName(slots[idx].step.load());
				return err;
			}
			done.push_back(tid);
			(*threads)++;
		}
	}
	*detail = "threads kept appearing after " + std::to_string(kMaxRounds) + " rounds";
	return EAGAIN;
}

// Every thread as the drop left it: effective = permitted = want, nothing
// inheritable or ambient, no_new_privs, and the bounding set reduced when it was.
std::string Verify(uint64_t want, uint64_t bounding, bool bounding_dropped)
{
	for (pid_t tid : ListThreads()) {
		ThreadState st = ReadThread(tid);
		if (!st.ok)
			continue; // ended
		std::string who = Describe(tid);
		if (st.eff != want || st.prm != want)
			return who + " has CapEff " + Hex(st.eff) + ", CapPrm " + Hex(st.prm) +
			       ", not " + Hex(want);
		if (st.inh != 0 || st.amb != 0)
			return who + " has CapInh " + Hex(st.inh) + ", CapAmb " + Hex(st.amb);
		if (st.nnp != 1)
			return who + " has NoNewPrivs " + std::to_string(st.nnp);
		if (bounding_dropped && st.bnd != bounding)
			return who + " has CapBnd " + Hex(st.bnd) + ", not " + Hex(bounding);
	}
	return "";
}

Napi::Error CapsError(Napi::Env env, const std::string &step, int err, const std::string &detail)
{
	return MakeBpfError(env, "drop capabilities: " + step, err, detail);
}

} // namespace

Napi::Value DropCapabilities(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	if (info.Length() < 1 || !info[0].IsBigInt())
		throw Napi::TypeError::New(env,
					   "dropCapabilities(keep): keep must be a bigint mask");
	bool lossless = true;
	uint64_t keep = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
	if (!lossless)
		throw Napi::RangeError::New(env,
					    "dropCapabilities(keep): keep must fit in 64 bits");

	last_cap = LastCap();
	keep_mask = keep & (last_cap >= 63 ? ~0ULL : (Bit(last_cap + 1) - 1));
	struct __user_cap_data_struct data[2];
	if (int err = CapGet(data))
		throw CapsError(env, "capget", err, "");
	uint64_t before = Join(data[0].permitted, data[1].permitted);
	bool can_bound = Join(data[0].effective, data[1].effective) & Bit(CAP_SETPCAP);
	uint64_t bounding_before = ReadThread(Tid()).bnd;
	pid_t pid = getpid(), self = Tid();

	// our handler on signal 33, borrowing the C library's signal return trampoline
	KernelSigaction act;
	if (int err = RtSigaction(kSignal, nullptr, &replaced))
		throw CapsError(env, "rt_sigaction", err, "reading signal 33");
#if defined(__x86_64__)
	if (!(replaced.flags & SA_RESTORER))
		throw CapsError(env, "rt_sigaction", ENOTSUP,
				"signal 33 has no handler of the C library's to borrow its "
				"sa_restorer from (not glibc?)");
#endif
	act.handler = reinterpret_cast<void *>(&OnSignal);
	act.flags = SA_SIGINFO | SA_RESTART | (replaced.flags & SA_RESTORER);
	act.restorer = replaced.restorer;
	act.mask = ~0ULL;
	generation.fetch_add(1);
	if (int err = RtSigaction(kSignal, &act, nullptr))
		throw CapsError(env, "rt_sigaction", err, "installing the handler of signal 33");

	int threads = 1, step = kStepDone;
	std::string detail;
	int err = DropThisThread(&step);
	if (err)
		detail = Describe(self) + ": " + StepName(step);
	else
		err = DropOtherThreads(pid, self, &threads, &detail);
	// a signal of ours still queued now is ignored by the C library's handler
	generation.fetch_add(1);
	int restore = RtSigaction(kSignal, &replaced, nullptr);
	if (err) {
		bool signalling = err == ETIMEDOUT || err == EAGAIN || err == E2BIG;
		throw CapsError(env, signalling ? "signal" : "thread", err, detail);
	}
	if (restore)
		throw CapsError(env, "rt_sigaction", restore, "restoring the handler of signal 33");

	uint64_t want = before & keep_mask;
	uint64_t bounding = can_bound ? bounding_before & keep_mask : bounding_before;
	std::string mismatch = Verify(want, bounding, can_bound);
	if (!mismatch.empty())
		throw CapsError(env, "verify", ENOTRECOVERABLE, mismatch);

	Napi::Object out = Napi::Object::New(env);
	out.Set("before", Napi::BigInt::New(env, before));
	out.Set("after", Napi::BigInt::New(env, want));
	out.Set("bounding", Napi::BigInt::New(env, bounding));
	out.Set("boundingDropped", Napi::Boolean::New(env, can_bound));
	out.Set("threads", Napi::Number::New(env, threads));
	return out;
}

// Kernels 5.8 to 5.18 refuse every bpf() command, even on a map's open file
// descriptor, to a task without CAP_BPF or CAP_SYS_ADMIN while
// kernel.unprivileged_bpf_disabled is set; 5.19 ("bpf: refine
// kernel.unprivileged_bpf_disabled behaviour") keeps only map creation and
// program loading behind that gate. Probed on a thread of its own, which gives
// up both capabilities in its effective set (capabilities are per thread: no
// other thread is touched) and asks for the info of fd -1: EPERM from the gate,
// EBADF past it.
Napi::Value BpfNeedsCapability(const Napi::CallbackInfo &info)
{
	Napi::Env env = info.Env();
	int result = 0, setup = 0;
	std::thread probe([&]() {
		struct __user_cap_data_struct data[2];
		setup = CapGet(data);
		if (setup)
			return;
		uint64_t eff = Join(data[0].effective, data[1].effective);
		uint64_t prm = Join(data[0].permitted, data[1].permitted);
		uint64_t inh = Join(data[0].inheritable, data[1].inheritable);
		setup = CapSet(eff & ~(Bit(kCapBpf) | Bit(CAP_SYS_ADMIN)), prm, inh);
		if (setup)
			return;
		union bpf_attr attr;
		memset(&attr, 0, sizeof(attr));
		attr.info.bpf_fd = static_cast<__u32>(-1);
		result = syscall(SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, sizeof(attr)) ? errno : 0;
	});
	probe.join();
	if (setup)
		throw CapsError(env, "probe", setup, "giving up CAP_BPF on the probe's thread");
	return Napi::Boolean::New(env, result == EPERM);
}

} // namespace tcptracer
