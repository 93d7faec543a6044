// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <memory>
#include <vector>

#include "event_format.hpp"

struct bpf_object;
struct bpf_link;
struct bpf_program;
struct bpf_map;
struct ring_buffer;
struct btf_var_secinfo;

namespace tcptracer
{

// A batch of raw ring-buffer records, handed from the drain thread to the JS thread.
struct Batch {
	std::vector<uint8_t> data;
	uint32_t count = 0;
	int err =
	    0; // a fatal error, with no records: of ring_buffer__poll, or of writing the output
	const char *op = "ring_buffer__poll";
};

void CallJsWithBatch(Napi::Env env, Napi::Function cb, std::nullptr_t *, Batch *batch);
using BatchTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, Batch, CallJsWithBatch>;

// One loaded BPF object: new Tracer(path, options) opens it, applies the load-time
// settings and loads it; attach() attaches every program that is enabled.
class Tracer : public Napi::ObjectWrap<Tracer>
{
      public:
	static Napi::Function Init(Napi::Env env);
	explicit Tracer(const Napi::CallbackInfo &info);
	~Tracer() override;

	// Detach, stop the drain thread and free everything. Idempotent; also run by
	// the environment's cleanup hook at exit.
	void Close();

      private:
	Napi::Value JS_attach(const Napi::CallbackInfo &info);
	Napi::Value JS_probeAttach(const Napi::CallbackInfo &info);
	Napi::Value JS_pinLinks(const Napi::CallbackInfo &info);
	Napi::Value JS_startEvents(const Napi::CallbackInfo &info);
	Napi::Value JS_stopEvents(const Napi::CallbackInfo &info);
	Napi::Value JS_mapInfo(const Napi::CallbackInfo &info);
	Napi::Value JS_mapEntries(const Napi::CallbackInfo &info);
	Napi::Value JS_mapRead(const Napi::CallbackInfo &info);
	Napi::Value JS_mapLookup(const Napi::CallbackInfo &info);
	Napi::Value JS_mapUpdate(const Napi::CallbackInfo &info);
	Napi::Value JS_mapDelete(const Napi::CallbackInfo &info);
	Napi::Value JS_drainStats(const Napi::CallbackInfo &info);
	Napi::Value JS_programStats(const Napi::CallbackInfo &info);
	Napi::Value JS_runProgram(const Napi::CallbackInfo &info);
	Napi::Value JS_close(const Napi::CallbackInfo &info);

	Napi::Object AttachProgram(Napi::Env env, bpf_program *prog, bpf_link **link);
	bpf_map *FindMap(Napi::Env env, const Napi::Value &name);
	void SetGlobal(Napi::Env env, const char *section, const std::string &var, uint64_t value);
	void SetGlobalBytes(Napi::Env env, const char *section, const std::string &var,
			    const uint8_t *bytes, size_t len);
	size_t GlobalSize(Napi::Env env, const char *section, const std::string &var);
	const struct btf_var_secinfo *FindGlobal(Napi::Env env, const char *section,
						 const std::string &var);
	Napi::Value JS_setGlobal(const Napi::CallbackInfo &info);
	void StopEvents();
	void DrainLoop();					 // runs on the drain thread
	static int OnRecord(void *ctx, void *data, size_t size); // drain thread
	void Deliver(Batch *b);					 // drain thread
	void Fail(const char *op, int err);			 // drain thread
	void OpenOutput(int fd);
	void Flush();			      // drain thread
	void GiveUp(size_t written, int err); // drain thread

	bpf_object *obj_ = nullptr;
	std::vector<bpf_link *> links_;
	std::vector<std::string> link_names_; // the program of each link
	ring_buffer *rb_ = nullptr;
	std::thread drain_;
	std::atomic<bool> running_{false};
	std::atomic<bool> stopping_{false}; // StopEvents: JS takes no more batches
	BatchTsfn tsfn_;
	Batch *batch_ = nullptr; // owned by the drain thread while running
	// Output mode (startEvents with `output`): the drain thread formats each record and writes
	// it to out_fd_ itself; JS gets only errors.
	std::unique_ptr<EventFormatter> formatter_;
	int out_fd_ = -1;
	std::string out_;	  // formatted, not yet written
	uint32_t out_count_ = 0;  // records in out_
	bool out_failed_ = false; // writing failed or was given up: the rest is counted as dropped
	bool out_owned_ = false;  // out_fd_ is our non-blocking reopening of the fd given
	bool out_small_writes_ = false; // a blocking pipe or socket: poll, then PIPE_BUF at a time
	std::atomic<int> out_errno_{0}; // the failed write's errno
	size_t max_batch_ = 4096;	// records per batch
	std::atomic<uint64_t> delivered_{0};
	std::atomic<uint64_t> dropped_{0};   // records dropped: JS was behind as events stopped
	std::atomic<uint64_t> malformed_{0}; // records of an unexpected size
	std::atomic<uint64_t> batches_{0};
	bool loaded_ = false;
	bool attached_ = false;
	Napi::Env env_{nullptr};
	Napi::FunctionReference *log_ = nullptr;
};

} // namespace tcptracer
