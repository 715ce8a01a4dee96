// keyline-service error codes, 8000-8099 (docs/service.md "Error codes"; core/error.h lists the ranges).
#pragma once

#include "keyline/core/error.h"

namespace keyline::service::errc {

constexpr core::ErrorCode UnknownDevice = static_cast<core::ErrorCode>(8001);  // no record in the public DB
constexpr core::ErrorCode RecordInvalid =
    static_cast<core::ErrorCode>(8002);  // the record does not verify to the root
constexpr core::ErrorCode NoMaster =
    static_cast<core::ErrorCode>(8003);  // the token lacks the master of that version
constexpr core::ErrorCode BadKeyVersion =
    static_cast<core::ErrorCode>(8004);  // a KVN other than 1 or 2, or lower than recorded
constexpr core::ErrorCode CardCryptogram =
    static_cast<core::ErrorCode>(8010);  // the card's cryptogram is wrong
constexpr core::ErrorCode BadAnswer =
    static_cast<core::ErrorCode>(8011);  // an answer that does not parse or fails R-MAC
constexpr core::ErrorCode CommandRefused =
    static_cast<core::ErrorCode>(8012);  // the device answered a status word other than 9000
constexpr core::ErrorCode BadCampaign =
    static_cast<core::ErrorCode>(8020);  // a campaign's input does not parse
constexpr core::ErrorCode CampaignConflict = static_cast<core::ErrorCode>(8021);  // same name, other payload
constexpr core::ErrorCode BadModule =
    static_cast<core::ErrorCode>(8030);  // a module that does not verify to the root
constexpr core::ErrorCode PublicDb = static_cast<core::ErrorCode>(8040);  // the public DB answered an error
constexpr core::ErrorCode UnknownImei =
    static_cast<core::ErrorCode>(8050);  // message: the public DB has no record of this IMEI
constexpr core::ErrorCode MessageTooLarge =
    static_cast<core::ErrorCode>(8051);  // message: over what the device opens (1 MiB sealed)

}  // namespace keyline::service::errc
