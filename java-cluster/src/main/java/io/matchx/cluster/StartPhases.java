package io.matchx.cluster;

import io.aeron.cluster.ElectionState;

import java.time.Duration;
import java.time.Instant;

/**
 * Log lines that say where a member's start goes: each line carries the milliseconds since the OS
 * process started, so JVM start, archive recovery, snapshot load, local log replay, catch-up from
 * the leader and joining the live log can be told apart in {@code member.log} (docs/operations.md,
 * "What a restart costs").
 */
final class StartPhases
{
    /** How often the election state is sampled while a member starts; a sleep, not a spin. */
    static final long POLL_MS = 5;
    /** A member still not in step after this long stops being watched (its election is logged by Aeron). */
    static final long GIVE_UP_MS = 600_000;

    private StartPhases()
    {
    }

    /** Milliseconds since this OS process started (the JVM may have started later: JPype). */
    static long sinceProcessStart()
    {
        return ProcessHandle.current().info().startInstant()
            .map((start) -> Duration.between(start, Instant.now()).toMillis())
            .orElse(-1L);
    }

    static void log(final String prefix, final String what)
    {
        System.err.println(prefix + " INFO start: " + what + " (+" + sinceProcessStart() + " ms since process start)");
        System.err.flush();
    }

    /**
     * Logs each change of the member's election state until its first election closes (the
     * member is then in step: a follower has caught up with the leader and joined its live log).
     * One daemon thread, gone once the member is in step; it runs {@code onInStep} then.
     */
    static void watchElection(final String prefix, final WatchedCounter electionState, final Runnable onInStep)
    {
        final Thread t = new Thread(() ->
        {
            final long giveUpNs = System.nanoTime() + GIVE_UP_MS * 1_000_000L;
            long last = Long.MIN_VALUE;
            try
            {
                while (System.nanoTime() < giveUpNs)
                {
                    final long code = electionState.get();
                    if (code == WatchedCounter.CLOSED)
                    {
                        return;
                    }
                    if (code != last)
                    {
                        last = code;
                        final ElectionState state = ElectionState.get(code);
                        log(prefix, "election state " + state +
                            (state == ElectionState.CLOSED ? ": in step with the cluster" : ""));
                        if (state == ElectionState.CLOSED)
                        {
                            onInStep.run();
                            return;
                        }
                    }
                    Thread.sleep(POLL_MS);
                }
            }
            catch (final InterruptedException ex)
            {
                Thread.currentThread().interrupt();
            }
            catch (final RuntimeException ex)
            {
                // the member is closing under us; nothing left to report
            }
        }, "matchx-start-phases");
        t.setDaemon(true);
        t.start();
    }
}
