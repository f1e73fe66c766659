package io.matchx.cluster;

import org.agrona.concurrent.IdleStrategy;

/**
 * A media driver's backoff that does not start again from its short parks after a duty cycle whose
 * only work was a lone idle frame: a publication's heartbeat (a 32-byte data frame), a status
 * message (36), a setup or RTT frame (40), a NAK, or a housekeeping tick.
 *
 * <p>Why: an idle member's driver sends and receives such frames hundreds of times a second
 * (heartbeats every {@link SetupRepeat#HEARTBEAT_MS}, status messages, the 20 ms timer tick), and
 * after each the backoff went through its ~10 short parks again (each ~55 µs on Linux, timer slack)
 * before it reached its longest park: ~4,700 wake-ups a second, the largest part of an idle
 * member's CPU (bench/reports/idle_cpu*.md). Those frames are never followed by more work the
 * driver must pick up at once, unlike an order: the smallest message on an order's path (a
 * consensus module's append or commit position) is a 64-byte frame, and a cycle with it still
 * starts the backoff again. Aeron's agents report bytes sent and received as their work count
 * (Sender, Receiver; the conductor counts commands and timers), which is what tells them apart.
 */
final class LightWorkBackoff
{
    /** The largest duty cycle work count that counts as idle frames only (one frame of at most 40 bytes, a few commands). */
    static final int DEFAULT_LIGHT_WORK = 48;

    private LightWorkBackoff()
    {
    }

    /** {@code backoff}, for which a duty cycle's work of at most {@code lightWork} is no work; 0 returns it as it is. */
    static IdleStrategy of(final IdleStrategy backoff, final int lightWork)
    {
        if (lightWork <= 0)
        {
            return backoff;
        }
        return new DelegatingIdleStrategy(backoff)
        {
            public void idle(final int workCount)
            {
                // a light cycle moves the backoff one step on, as a cycle without work does: on an
                // order's path its parks are still the timer slack's ~55 us until ~0.35 ms after the
                // last frame with a payload, when the order's next frame has come
                inner.idle(workCount > lightWork ? workCount : 0);
            }
        };
    }
}
