// kiln_stream.h: a minimal hls::stream stand-in so C-simulation builds without Vitis headers.
// Only what generated code uses: write, read, empty, size. Under __SYNTHESIS__ or when
// KILN_USE_AP_TYPES is defined, Vitis's own <hls_stream.h> is used instead.
#ifndef KILN_STREAM_H
#define KILN_STREAM_H

#if defined(__SYNTHESIS__) || defined(KILN_USE_AP_TYPES)
#include <hls_stream.h>
#else
#include <deque>
#include <stdexcept>

namespace hls {
template <typename T>
class stream {
  public:
    stream() {}
    explicit stream(const char*) {}
    void write(const T& v) { q_.push_back(v); }
    T read() {
        if (q_.empty()) throw std::runtime_error("hls::stream read while empty");
        T v = q_.front();
        q_.pop_front();
        return v;
    }
    bool empty() const { return q_.empty(); }
    size_t size() const { return q_.size(); }

  private:
    std::deque<T> q_;
};
}  // namespace hls
#endif

#endif  // KILN_STREAM_H
