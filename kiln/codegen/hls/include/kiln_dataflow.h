// kiln_dataflow.h: a threaded dataflow simulation of kiln's io_stream designs (g++ only).
//
// Built with -DKILN_DATAFLOW_THREADS -pthread, the generated top function starts one thread per
// stage (KILN_STAGE) and each FIFO blocks its writer when it holds KILN_STREAM_DEPTH beats, as
// the hardware FIFO does; ports stay unbounded. That checks what the sequential C-simulation
// cannot: that the FIFO depths kiln sized let every stage run to completion. A deadlock (every
// unfinished stage waiting on a FIFO) is detected exactly, not by a timeout: each FIFO has one
// writer and one reader, so a waiter is counted blocked until its partner moves a beat; when
// all running stages are blocked the program names the FIFO and exits with status 3.
#ifndef KILN_DATAFLOW_H
#define KILN_DATAFLOW_H

#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kiln {
namespace dataflow {

struct State {
    std::mutex mutex;
    std::condition_variable moved;
    int running = 0;
    int blocked = 0;
};

inline State& state() {
    static State s;
    return s;
}

// Called with the lock held whenever a stage blocks or finishes.
inline void check_deadlock(const std::string& where) {
    State& s = state();
    if (s.running > 0 && s.blocked == s.running) {
        std::fprintf(stderr, "kiln dataflow deadlock: %d stage(s) blocked, last at %s\n",
                     s.blocked, where.c_str());
        std::fflush(stderr);
        std::_Exit(3);
    }
}

struct Region {
    std::vector<std::thread> threads;
    explicit Region(int stages) {
        std::lock_guard<std::mutex> lock(state().mutex);
        state().running = stages;
        state().blocked = 0;
    }
    template <typename F>
    void start(F body) {
        threads.push_back(std::thread([body]() {
            body();
            std::lock_guard<std::mutex> lock(state().mutex);
            state().running--;
            check_deadlock("a finished stage");
            state().moved.notify_all();
        }));
    }
    void join() {  // before the top function's FIFOs go out of scope
        for (size_t i = 0; i < threads.size(); i++) threads[i].join();
        threads.clear();
    }
    ~Region() { join(); }
};

}  // namespace dataflow
}  // namespace kiln

namespace hls {
template <typename T>
class stream {
  public:
    stream() : name_("hls::stream") {}
    explicit stream(const char* name) : name_(name) {}
    void set_depth(size_t depth) { depth_ = depth; }
    void write(const T& v) {
        kiln::dataflow::State& s = kiln::dataflow::state();
        std::unique_lock<std::mutex> lock(s.mutex);
        if (q_.size() >= depth_) wait(lock, writer_waiting_, "write to full FIFO ");
        q_.push_back(v);
        wake(reader_waiting_);
    }
    T read() {
        kiln::dataflow::State& s = kiln::dataflow::state();
        std::unique_lock<std::mutex> lock(s.mutex);
        if (q_.empty()) wait(lock, reader_waiting_, "read from empty FIFO ");
        T v = q_.front();
        q_.pop_front();
        wake(writer_waiting_);
        return v;
    }
    void read(T& v) { v = read(); }
    void operator<<(const T& v) { write(v); }
    void operator>>(T& v) { read(v); }
    bool empty() const { return q_.empty(); }
    size_t size() const { return q_.size(); }

  private:
    stream(const stream&);
    stream& operator=(const stream&);
    // Block until the partner clears `flag` (it moved a beat: the condition now holds).
    void wait(std::unique_lock<std::mutex>& lock, bool& flag, const char* what) {
        kiln::dataflow::State& s = kiln::dataflow::state();
        flag = true;
        s.blocked++;
        kiln::dataflow::check_deadlock(what + name_);
        while (flag) s.moved.wait(lock);
    }
    void wake(bool& flag) {
        if (!flag) return;
        flag = false;
        kiln::dataflow::state().blocked--;
        kiln::dataflow::state().moved.notify_all();
    }
    std::string name_;
    std::deque<T> q_;
    size_t depth_ = (size_t)-1;
    bool reader_waiting_ = false;
    bool writer_waiting_ = false;
};
}  // namespace hls

#define KILN_DATAFLOW_BEGIN(stages) kiln::dataflow::Region kiln_region_(stages)
#define KILN_STREAM_DEPTH(fifo, depth) fifo.set_depth(depth)
#define KILN_STAGE(call) kiln_region_.start([&]() { call; })
#define KILN_DATAFLOW_END() kiln_region_.join()

#endif  // KILN_DATAFLOW_H
