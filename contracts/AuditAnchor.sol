// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title AuditAnchor: Merkle roots of a FHIR server's AuditEvents, so anyone can check that an
/// AuditEvent existed when it was anchored without trusting the server.
/// @notice Each replica of the server numbers its AuditEvents 0, 1, 2, ... and anchors them in
/// consecutive ranges: one root per interval over the leaves (keccak256 of each AuditEvent's
/// RFC 8785 canonical JSON) firstSeq .. firstSeq + count - 1, pairs hashed sorted. The contract
/// refuses a range that does not start where the replica's previous one ended, so the ranges on
/// chain leave no gap and never overlap, and it refuses a root anchored before.
contract AuditAnchor {
    /// Who may change the anchorers.
    address public owner;
    /// The server accounts that may anchor.
    mapping(address anchorer => bool) public anchorers;
    /// The first sequence number of each replica's next anchor.
    mapping(bytes32 replica => uint64) public nextSeq;
    /// The block a root was anchored in; 0 if it never was.
    mapping(bytes32 root => uint256) public anchoredAt;

    event OwnerChanged(address indexed previous, address indexed next);
    event AnchorerChanged(address indexed anchorer, bool allowed);
    /// One anchor: `count` AuditEvents of `replica`, from `firstSeq`, under `root`.
    event Anchored(
        bytes32 indexed replica, bytes32 indexed root, uint64 count, uint64 firstSeq, address anchorer
    );

    error NotOwner();
    error NotAnchorer();
    error ZeroAddress();
    error EmptyAnchor();
    error OutOfSequence(uint64 expected);
    error AlreadyAnchored();

    constructor(address firstAnchorer) {
        if (firstAnchorer == address(0)) revert ZeroAddress();
        owner = msg.sender;
        anchorers[firstAnchorer] = true;
        emit OwnerChanged(address(0), msg.sender);
        emit AnchorerChanged(firstAnchorer, true);
    }

    function setAnchorer(address anchorer, bool allowed) external {
        if (msg.sender != owner) revert NotOwner();
        if (anchorer == address(0)) revert ZeroAddress();
        anchorers[anchorer] = allowed;
        emit AnchorerChanged(anchorer, allowed);
    }

    function transferOwnership(address next) external {
        if (msg.sender != owner) revert NotOwner();
        if (next == address(0)) revert ZeroAddress();
        emit OwnerChanged(owner, next);
        owner = next;
    }

    /// Anchors `root` over `count` AuditEvents of `replica` starting at `firstSeq`.
    function anchor(bytes32 replica, bytes32 root, uint64 count, uint64 firstSeq) external {
        if (!anchorers[msg.sender]) revert NotAnchorer();
        if (count == 0 || root == bytes32(0)) revert EmptyAnchor();
        // Checked first: a server that anchored but crashed before it recorded so learns it
        // from this revert when it tries the same anchor again.
        if (anchoredAt[root] != 0) revert AlreadyAnchored();
        uint64 expected = nextSeq[replica];
        if (firstSeq != expected) revert OutOfSequence(expected);
        nextSeq[replica] = firstSeq + count;
        anchoredAt[root] = block.number;
        emit Anchored(replica, root, count, firstSeq, msg.sender);
    }
}
