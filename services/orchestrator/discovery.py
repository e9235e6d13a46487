"""What grpcurl, grpc-health-probe and Kubernetes ask a gRPC server: reflection (v1 and v1alpha) and
health `Check` / `Watch` / `List`.

grpcio-reflection and grpcio-health-checking 1.62 (pinned with protobuf 4, which Triton's client fixes)
serve reflection v1alpha only and health without `List`. Reflection v1's messages are the same bytes
as v1alpha's, so v1 is the same servicer under the v1 name. `List`'s messages are declared here as
their wire form: `map<string, HealthCheckResponse> statuses = 1` is a repeated (key, value) entry.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _health_list_messages():
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="glmvoice/health_list.proto", package="grpc.health.v1", syntax="proto3",
        dependency=[health_pb2.DESCRIPTOR.name],
    )
    proto.message_type.add(name="HealthListRequest")
    response = proto.message_type.add(name="HealthListResponse")
    entry = response.nested_type.add(name="StatusesEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".grpc.health.v1.HealthCheckResponse")
    response.field.add(name="statuses", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                       type_name=".grpc.health.v1.HealthListResponse.StatusesEntry")
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(proto.name)
    except KeyError:
        pool.Add(proto)
    find = pool.FindMessageTypeByName
    return (message_factory.GetMessageClass(find("grpc.health.v1.HealthListRequest")),
            message_factory.GetMessageClass(find("grpc.health.v1.HealthListResponse")))


HealthListRequest, HealthListResponse = _health_list_messages()


def enable_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    names = (*service_names, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo, reflection_pb2.ServerReflectionRequest.FromString,
            reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))


def enable_health_list(server: grpc.aio.Server, health) -> None:
    """Health `List`: every service's status (the servicer's own table, as Check reads it)."""
    async def list_statuses(request, context):
        statuses = [HealthListResponse.StatusesEntry(key=name, value=health_pb2.HealthCheckResponse(status=status))
                    for name, status in sorted(health._server_status.items())]
        return HealthListResponse(statuses=statuses)

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH, {
        "List": grpc.unary_unary_rpc_method_handler(list_statuses, HealthListRequest.FromString,
                                                    HealthListResponse.SerializeToString),
    }),))
