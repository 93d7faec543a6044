// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <napi.h>

namespace tcptracer
{

// libbpf's print callback queues its lines (from any thread); FlushLog hands them,
// on the JS thread, to log(level, message) with level "warn", "info" or "debug".
// Debug lines are kept only while verbose logging is on.
void InstallLibbpfLog();
void SetVerbose(bool on);
void FlushLog(Napi::Env env, const Napi::FunctionReference &log);

} // namespace tcptracer
