// kiln_stream.h: a minimal hls::stream stand-in so C-simulation builds without Vitis headers.
//
// io_stream designs (kiln_stream_layers.h) connect layer functions by hls::stream FIFOs. For
// synthesis (__SYNTHESIS__) or when KILN_USE_AP_TYPES is defined (a build against the vendor
// headers, e.g. Xilinx's hls_stream.h / ap_fixed.h shipped with hls4ml), the vendor
// <hls_stream.h> is used instead and this stand-in is not compiled.
//
// The stand-in has the C-simulation semantics of the vendor model: an unbounded FIFO (the
// functions of a DATAFLOW region run one after the other in C-simulation, so a FIFO may hold a
// whole tensor; the depth used in hardware comes from `#pragma HLS STREAM depth=`), blocking
// read on an empty stream being a bug (it throws with the stream's name instead of hanging).
// With KILN_DATAFLOW_THREADS (kiln_dataflow.h) every stage runs in its own thread and every
// FIFO blocks at its `KILN_STREAM_DEPTH`, as in hardware: a deadlock is detected and reported.
// Only what kiln's generated code and testbench use: write, read, empty, size, and the
// vendor's read(T&) / operator<< / operator>> spellings.
#ifndef KILN_STREAM_H
#define KILN_STREAM_H

#if defined(__SYNTHESIS__) || defined(KILN_USE_AP_TYPES)
#include <hls_stream.h>
#elif defined(KILN_DATAFLOW_THREADS)
#include "kiln_dataflow.h"
#else
#include <cstddef>
#include <deque>
#include <stdexcept>
#include <string>

namespace hls {
template <typename T>
class stream {
  public:
    stream() : name_("hls::stream") {}
    explicit stream(const char* name) : name_(name) {}
    void write(const T& v) { q_.push_back(v); }
    T read() {
        if (q_.empty()) throw std::runtime_error(name_ + ": read while empty");
        T v = q_.front();
        q_.pop_front();
        return v;
    }
    void read(T& v) { v = read(); }
    void operator<<(const T& v) { write(v); }
    void operator>>(T& v) { read(v); }
    bool empty() const { return q_.empty(); }
    std::size_t size() const { return q_.size(); }

  private:
    stream(const stream&);  // a FIFO is a wire: never copied (as in the vendor model)
    stream& operator=(const stream&);
    std::string name_;
    std::deque<T> q_;
};
}  // namespace hls
#endif

// The generated top function's dataflow markers: plain calls for synthesis and the sequential
// C-simulation; one thread per stage with bounded FIFOs under KILN_DATAFLOW_THREADS.
#if !defined(KILN_DATAFLOW_THREADS) || defined(__SYNTHESIS__) || defined(KILN_USE_AP_TYPES)
#define KILN_DATAFLOW_BEGIN(stages)
#define KILN_STREAM_DEPTH(fifo, depth)
#define KILN_STAGE(call) call
#define KILN_DATAFLOW_END()
#endif

#endif  // KILN_STREAM_H
