package io.matchx.cluster;

import io.aeron.cluster.ConsensusModule;
import org.agrona.CloseHelper;

import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;

/**
 * A planned leader handover within Aeron open source, which has no leadership transfer.
 *
 * <p>1. Hold and drain: the leader that is stopping (SIGTERM, {@code matchctl member restart},
 * {@code matchctl cluster handover}) tells each client session that sends a command to hold new
 * commands ({@link MatchService#beginHold}); our SDK stops sending, acks the hold on its ingress
 * and queues what it is given until the new leader's event. The ack reaches the service behind
 * everything the session sent before it, so once every told session has acked, nothing of theirs
 * is in flight: no command needs a resend and the new leader has no unanswered tail to replay.
 * The drain ends when every told session has acked, or, when no session has been told, once no
 * command has come for {@link #QUIET_MS} (none sending), or after {@link #MAX_DRAIN_MS} (a client
 * that ignores the notice, or an ack that is late). Meanwhile the leader goes on answering: a client that does not know the
 * notice (a raw Aeron session) just keeps trading until the log ends, and then follows the new
 * leader the normal way.
 *
 * <p>2. End of log: the consensus module closes while the media driver still runs. Its log
 * publication then ends with an end-of-stream the followers receive at once; a follower whose log
 * image ends enters an election straight away ("log recording stopped: eos=true") instead of
 * waiting for the leader heartbeat timeout, as it must after a crash. The driver lingers a moment so
 * the end of stream is sent before it stops; then the rest of the member closes as before.
 */
final class Handover
{
    /**
     * How long the media driver keeps running after the consensus module closed, at least: the end
     * of stream travels on the closed publication's next idle heartbeat, sent one heartbeat interval
     * after its last frame ({@link SetupRepeat#HEARTBEAT_MS}; Aeron's 100 ms if that could not be
     * set). A driver closed before then never sends it, and the followers wait out the leader
     * heartbeat timeout instead (the 100 ms linger against a 100 ms heartbeat was such a race).
     */
    static final long LINGER_MS = 100;
    /**
     * The drain ends when no command has been applied for this long (clients that do not ack, or
     * none sending). 20 ms let a drain end before a client sending every 5 ms had been told, on a
     * machine at load ~50 (its next command came later than that): it was then not held at all.
     */
    static final long QUIET_MS = 50;
    /** The drain ends after this long whatever the clients do. */
    static final long MAX_DRAIN_MS = 100;
    private static final long POLL_NS = TimeUnit.MICROSECONDS.toNanos(500);

    private Handover()
    {
    }

    /** A leading member about to hand over: its log prefix, service and consensus module. */
    static final class Leader
    {
        final String prefix;
        final MatchService service;
        final ConsensusModule consensusModule;

        Leader(final String prefix, final MatchService service, final ConsensusModule consensusModule)
        {
            this.prefix = prefix;
            this.service = service;
            this.consensusModule = consensusModule;
        }

        boolean leads()
        {
            return null != service && null != consensusModule && service.role() == 2;
        }
    }

    /**
     * Drains and ends the log of every member in {@code members} that leads (their drains run
     * at once); true when there was one (then call {@link #linger}).
     */
    static boolean endLeadership(final List<Leader> members)
    {
        final long started = System.nanoTime();
        boolean any = false;
        for (final Leader m : members)
        {
            if (m.leads())
            {
                m.service.beginHold();
                any = true;
            }
        }
        if (!any)
        {
            return false;
        }
        for (final Leader m : members)
        {
            if (m.leads())
            {
                final String how = drain(m.service, started);
                final long drainedNs = System.nanoTime();
                CloseHelper.quietClose(m.consensusModule);
                final long closedNs = System.nanoTime();
                // monotonic ms (CLOCK_MONOTONIC, as Python's time.monotonic()): bench/handover.py
                // lines these up with the election trace and the client's events
                // "leader stopping: log ended for a handover" is what operators and tests look for
                System.err.println(m.prefix + " INFO leader stopping: log ended for a handover in " +
                    TimeUnit.NANOSECONDS.toMillis(closedNs - drainedNs) + " ms, after a drain of " +
                    TimeUnit.NANOSECONDS.toMillis(drainedNs - started) + " ms (" + how + "; " +
                    m.service.holdAcks() + "/" + m.service.holdsSent() + " sessions acked the hold) [handover " +
                    "hold_at=" + ms(started) + " drained_at=" + ms(drainedNs) + " log_ended_at=" + ms(closedNs) + "]");
                System.err.flush();
            }
        }
        return true;
    }

    /** As above for one member. */
    static boolean endLeadership(final String prefix, final MatchService service, final ConsensusModule consensusModule)
    {
        return endLeadership(List.of(new Leader(prefix, service, consensusModule)));
    }

    /** Waits until the drain is over (see the class comment); says why it ended. */
    static String drain(final MatchService service, final long startedNs)
    {
        while (true)
        {
            final long nowNs = System.nanoTime();
            final String end = drainEnd(service.holdsSent(), service.holdAcks(),
                nowNs - service.lastCommandNs(), nowNs - startedNs);
            if (null != end)
            {
                return end;
            }
            LockSupport.parkNanos(POLL_NS);
        }
    }

    /**
     * Why the drain ends now, or null while it goes on. A session that was told to hold and has
     * not acked yet is waited for up to the bound even when no command comes: a told SDK session
     * goes quiet because it holds, and its ack is on its way behind what it sent (the quiet rule
     * alone once ended a drain 61 ms in, before the ack of a client on a loaded machine, so what
     * that client had sent had to be checked by a resend instead).
     */
    static String drainEnd(final int told, final int acked, final long sinceLastCommandNs, final long sinceStartNs)
    {
        if (told > 0 && acked == told)
        {
            return "every told session acked";
        }
        if (told == 0 && sinceLastCommandNs >= TimeUnit.MILLISECONDS.toNanos(QUIET_MS))
        {
            return "no command for " + QUIET_MS + " ms";
        }
        if (sinceStartNs >= TimeUnit.MILLISECONDS.toNanos(MAX_DRAIN_MS))
        {
            return "bound of " + MAX_DRAIN_MS + " ms";
        }
        return null;
    }

    private static String ms(final long nanoTime)
    {
        return String.format(java.util.Locale.ROOT, "%.1f", nanoTime / 1e6);
    }

    /** The linger in force: three heartbeat intervals, at least {@link #LINGER_MS}. */
    static long lingerMs()
    {
        return Math.max(LINGER_MS, 3 * TimeUnit.NANOSECONDS.toMillis(SetupRepeat.currentHeartbeat()));
    }

    /** Lets the driver send the end of stream before it is closed. */
    static void linger()
    {
        try
        {
            Thread.sleep(lingerMs());
        }
        catch (final InterruptedException ex)
        {
            Thread.currentThread().interrupt();
        }
    }
}
