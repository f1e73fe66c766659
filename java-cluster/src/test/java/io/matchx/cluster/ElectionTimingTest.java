package io.matchx.cluster;

import io.aeron.cluster.ConsensusModule;
import io.aeron.cluster.ElectionState;

import org.junit.jupiter.api.Test;

import java.lang.reflect.Field;
import java.lang.reflect.Modifier;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

class ElectionTimingTest
{
    /** An Aeron upgrade that renames these would quietly leave catch-up progress at 120 ms. */
    @Test
    void theConsensusModuleFieldsItSetsExist() throws Exception
    {
        final Field conductor = ConsensusModule.class.getDeclaredField("conductor");
        final Class<?> agent = Class.forName("io.aeron.cluster.ConsensusModuleAgent");
        assertEquals(agent, conductor.getType());
        final Field timeout = agent.getDeclaredField("leaderHeartbeatTimeoutNs");
        assertEquals(long.class, timeout.getType());
        assertFalse(Modifier.isStatic(timeout.getModifiers()));
    }

    @Test
    void onlyTheStepsAfterTheVoteGetTheProgressDeadline()
    {
        for (final ElectionState s : new ElectionState[]{
            ElectionState.INIT, ElectionState.CANVASS, ElectionState.NOMINATE, ElectionState.CANDIDATE_BALLOT,
            ElectionState.CLOSED})
        {
            assertFalse(ElectionTiming.isProgressStep(s), s.name());
        }
        for (final ElectionState s : new ElectionState[]{
            ElectionState.FOLLOWER_BALLOT, ElectionState.LEADER_LOG_REPLICATION, ElectionState.LEADER_READY,
            ElectionState.FOLLOWER_LOG_REPLICATION,
            ElectionState.FOLLOWER_CATCHUP_AWAIT, ElectionState.FOLLOWER_CATCHUP, ElectionState.FOLLOWER_LOG_AWAIT,
            ElectionState.FOLLOWER_READY})
        {
            assertTrue(ElectionTiming.isProgressStep(s), s.name());
        }
    }
}
