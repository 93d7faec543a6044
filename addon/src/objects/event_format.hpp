// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>

struct event;

namespace tcptracer
{

// How `trace` prints events: the columns of BCC's tcptracer, or JSON lines.
struct FormatOptions {
	bool json = false;
	bool timestamp = false;
	bool verbose = false;
	bool netns_filtered = false; // the NETNS column is left out, as in tcptracer
};

// Formats ring-buffer records into the lines `trace` prints, byte for byte what
// src/cli/trace-format.ts writes for the same record (that file is the reference,
// and test/unit/trace-native-format.test.ts holds the two together). The drain
// thread formats here, so that no JavaScript runs per event at full rate.
class EventFormatter
{
      public:
	explicit EventFormatter(const FormatOptions &o) : opts_(o)
	{
	}

	// Append the record's line and a '\n' to `out`. False, and nothing appended, for a
	// record the TypeScript decoder would refuse (unknown type, IP version, direction or
	// failure reason).
	bool Append(std::string &out, const struct event &e);

      private:
	FormatOptions opts_;
	bool have_start_ = false;
	uint64_t start_ns_ = 0; // text TIME column: the earliest timestamp seen
};

} // namespace tcptracer
