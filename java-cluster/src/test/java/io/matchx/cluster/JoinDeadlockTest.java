package io.matchx.cluster;

import io.aeron.cluster.client.ClusterException;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

class JoinDeadlockTest
{
    private static StackTraceElement frame(final String cls, final String method)
    {
        return new StackTraceElement(cls, method, "X.java", 1);
    }

    /** The two stacks of the member that stayed in FOLLOWER_LOG_AWAIT (bench/reports/stuck_election.md). */
    private static final StackTraceElement[] CONSENSUS = {
        frame("org.agrona.concurrent.BackoffIdleStrategy", "idle"),
        frame("io.aeron.cluster.ConsensusModuleAgent", "idle"),
        frame("io.aeron.cluster.ConsensusModuleAgent", "awaitServicesReady"),
        frame("io.aeron.cluster.ConsensusModuleAgent", "tryJoinLogAsFollower"),
        frame("io.aeron.cluster.Election", "followerLogAwait"),
    };
    private static final StackTraceElement[] SERVICE = {
        frame("org.agrona.concurrent.BackoffIdleStrategy", "idle"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "idle"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "awaitImage"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "joinActiveLog"),
        frame("io.aeron.cluster.service.ClusteredServiceAgent", "pollServiceAdapter"),
    };

    @Test
    void bothWaitsOfALogJoinAreADeadlock()
    {
        assertTrue(JoinDeadlock.isDeadlock(CONSENSUS, SERVICE));
    }

    @Test
    void theConsensusModuleWaitingForItsServiceIsStuckWhateverTheServiceDoes()
    {
        // the service busy elsewhere (in a command, or blocked outside Aeron) never acks either
        final StackTraceElement[] serviceWorking = {
            frame("io.matchx.cluster.MatchService", "onSessionMessage"),
            frame("io.aeron.cluster.service.ClusteredServiceAgent", "onSessionMessage"),
        };
        assertTrue(JoinDeadlock.isDeadlock(CONSENSUS, serviceWorking));
        assertTrue(JoinDeadlock.isDeadlock(CONSENSUS, null));
    }

    @Test
    void aConsensusModuleOutsideTheWaitOrAServiceLoadingItsSnapshotIsNot()
    {
        final StackTraceElement[] consensusElecting = {
            frame("io.aeron.cluster.Election", "canvass"),
            frame("io.aeron.cluster.ConsensusModuleAgent", "doWork"),
        };
        assertFalse(JoinDeadlock.isDeadlock(consensusElecting, SERVICE));
        assertFalse(JoinDeadlock.isDeadlock(null, SERVICE));
        // a large snapshot's load may take seconds on a starved machine: not a stuck join
        final StackTraceElement[] loadingSnapshot = {
            frame("io.aeron.cluster.service.ClusteredServiceAgent", "awaitImage"),
            frame("io.aeron.cluster.service.ClusteredServiceAgent", "loadSnapshot"),
        };
        assertFalse(JoinDeadlock.isDeadlock(CONSENSUS, loadingSnapshot));
    }

    @Test
    void aRestartEndsTheProcessLatchWaitWithItsReason() throws Exception
    {
        final ShutdownLatch latch = new ShutdownLatch();
        ShutdownLatch.restart("join deadlock of consensus-module-0-2");
        assertEquals(ShutdownLatch.RESTART, latch.await());
        assertEquals("join deadlock of consensus-module-0-2", latch.restartReason());
        // once ended, a second request changes nothing
        ShutdownLatch.restart("again");
        assertEquals("join deadlock of consensus-module-0-2", latch.restartReason());
    }

    @Test
    void aShortStateChangeOrNoDeadlockNeverRestarts() throws Exception
    {
        final ShutdownLatch latch = new ShutdownLatch();
        // this JVM's threads are not a member's: no consensus-module-7-1 thread, never a deadlock
        final JoinDeadlock watch = new JoinDeadlock(7, 1, "[test]");
        for (long t = 0; t < 60_000; t += JoinDeadlock.SAMPLE_EVERY_MS)
        {
            watch.check(t, t, "FOLLOWER_LOG_AWAIT");
        }
        latch.release();
        assertEquals("", latch.await());
        assertEquals("", latch.restartReason());
    }

    /** Aeron's service refusing a join (ClusteredServiceAgent.joinActiveLog), as seen in a member log. */
    private static final ClusterException REFUSAL = new ClusterException(
        "Cluster log must be contiguous for joining image: expectedPosition=1818304 joinPosition=1818400");

    @Test
    void aServiceRefusingALogJoinIsNoticedAndStillReported()
    {
        assertTrue(JoinDeadlock.isJoinRefusal(REFUSAL));
        assertTrue(JoinDeadlock.isJoinRefusal(new ClusterException(
            "Cluster log must be contiguous for active log event: expectedPosition=1 eventPosition=2")));
        assertFalse(JoinDeadlock.isJoinRefusal(new ClusterException("unexpected vote request")));
        assertFalse(JoinDeadlock.isJoinRefusal(new IllegalStateException(REFUSAL.getMessage())));

        final List<Throwable> seen = new ArrayList<>();
        JoinDeadlock.noticingJoinRefusals(7, 1, seen::add).onError(REFUSAL);
        assertEquals(List.of(REFUSAL), seen);
    }

    @Test
    void aRefusedJoinWithTheConsensusModuleWaitingForItRestartsAtOnce()
    {
        final long now = 100_000;
        assertTrue(JoinDeadlock.refusedJoinDeadlock(now - 20, now, CONSENSUS));
        // no refusal, a stale one, or the consensus module not in the wait: the slow path decides
        assertFalse(JoinDeadlock.refusedJoinDeadlock(null, now, CONSENSUS));
        assertFalse(JoinDeadlock.refusedJoinDeadlock(now - JoinDeadlock.REFUSAL_VALID_MS - 1, now, CONSENSUS));
        final StackTraceElement[] consensusElecting = {
            frame("io.aeron.cluster.Election", "canvass"),
            frame("io.aeron.cluster.ConsensusModuleAgent", "doWork"),
        };
        assertFalse(JoinDeadlock.refusedJoinDeadlock(now - 20, now, consensusElecting));
        assertFalse(JoinDeadlock.refusedJoinDeadlock(now - 20, now, null));
    }
}
